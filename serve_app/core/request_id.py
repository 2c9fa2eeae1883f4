"""Request ids: the header that carries one, which ones a client may send, the id a request
without one gets, and the context that stamps it on every log line written for the request.

Pure (stdlib only). Ray Serve's proxy sets ``X-Request-Id`` on each request (the client's, or one
of its own) and echoes it on the response; the router makes one up only when no one did (e.g.
in-process use). Ids travel into log lines and engine request ids, so only short printable ones
are accepted from clients.
"""

from __future__ import annotations

import contextvars
import re
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

REQUEST_ID_HEADER = b"x-request-id"  # the header name as ASGI carries it
MAX_REQUEST_ID_CHARS = 128
_CLIENT_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_REQUEST_ID_CHARS)

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("serve_app_request_id", default=None)


def is_valid_client_request_id(value: bytes) -> bool:
    """1 to 128 printable ASCII characters without spaces."""
    return _CLIENT_REQUEST_ID.fullmatch(value) is not None


def incoming_request_id(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    return next((v for k, v in headers if k.lower() == REQUEST_ID_HEADER), None)


def request_id_for(incoming: bytes | None) -> str:
    """The request's id: the one it came with, else a new one."""
    return (incoming.decode("latin-1") if incoming else uuid.uuid4().hex)[:MAX_REQUEST_ID_CHARS]


@contextmanager
def request_context(request_id: str) -> Iterator[None]:
    """Lines logged inside (and in tasks started inside) carry ``request_id`` without being told."""
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)


def current_request_id() -> str | None:
    return _request_id.get()
