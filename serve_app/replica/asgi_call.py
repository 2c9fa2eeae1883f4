"""Run one ``RelayRequest`` through an ASGI app in this process, turning what the app sends into
contract events (serve_app.replica.contract).

The app is vLLM's own OpenAI server (or the fake one in unit tests): the replica speaks HTTP to it
without a socket, so every route, parameter and error vLLM serves comes through unchanged.

Cancelling: vLLM's handlers learn that a client left from an ``http.disconnect`` message (its
``with_cancellation`` wrapper and Starlette's streaming response both listen for one), which is
what makes it abort the engine request. Cancelling the task that runs the app would not reach a
handler already started in a task of its own, so a request is cancelled by ``disconnect()``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from typing import Any

from serve_app.replica.contract import Event, RelayRequest, ResponseBody, ResponseEnd, ResponseStart, Usage

ASGIApp = Callable[..., Any]
Emit = Callable[[Event], None]

_PROMPT_TOKENS = re.compile(rb'"prompt_tokens":(\d+)')
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens":(\d+)')
_FINISH_REASON = re.compile(rb'"finish_reason":"([a-z_]+)"')


def _last_int(pattern: re.Pattern[bytes], data: bytes) -> int | None:
    found = pattern.findall(data)
    return int(found[-1]) if found else None


def _usage_recorded_by_vllm(state: dict[str, Any]) -> Any:
    """The token counts vLLM's chat and completion handlers record on the request's state for
    its own middleware (``request_metadata.final_usage_info``), streamed or not, whatever the
    client asked: the replica reads them there rather than change the client's request."""
    metadata = state.get("request_metadata")
    return getattr(metadata, "final_usage_info", None)


class ResponseSink:
    """Collects one response's ASGI messages into events, reading the token counts on the way."""

    def __init__(self, index: int, request: RelayRequest, emit: Emit) -> None:
        self.index = index
        self.request = request
        self.emit = emit
        self.state: dict[str, Any] = {}  # the request's ASGI state, where vLLM records usage
        self.status = 0
        self._start: ResponseStart | None = None
        self.ended = False
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.error: str | None = None

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            self._start = ResponseStart(self.index, message["status"], tuple(message.get("headers") or ()))
        elif kind == "http.response.body" and not self.ended:
            data = message.get("body", b"")
            more = message.get("more_body", False)
            if data:
                data = self._read_counts(data)
            if data:
                self._flush_start()
                self.emit(ResponseBody(self.index, data))
            if not more:
                self.end()

    def _read_counts(self, data: bytes) -> bytes:
        # Other answers (embeddings, pooling) carry their usage in their JSON body.
        if b'"usage":{' in data:
            self.prompt_tokens = _last_int(_PROMPT_TOKENS, data) or self.prompt_tokens
            self.completion_tokens = _last_int(_COMPLETION_TOKENS, data) or self.completion_tokens
        if b'"finish_reason":"' in data:
            self.finish_reason = _FINISH_REASON.findall(data)[-1].decode()
        return data

    def _flush_start(self) -> None:
        if self._start is not None:
            self.emit(self._start)
            self._start = None

    def end(self, error: str | None = None, status: int = 200) -> None:
        if self.ended:
            return
        self.ended = True
        self.error = error
        if error is None:
            self._flush_start()
        if (recorded := _usage_recorded_by_vllm(self.state)) is not None:
            self.prompt_tokens = recorded.prompt_tokens or 0
            self.completion_tokens = recorded.completion_tokens or 0
        usage = Usage(self.prompt_tokens, self.completion_tokens, self.finish_reason)
        self.emit(ResponseEnd(self.index, usage, error, status))


def http_scope(request: RelayRequest) -> dict[str, Any]:
    path, _, query = request.path.partition("?")
    return {
        "type": "http",
        # Spec 2.3: Starlette's streaming response then listens for http.disconnect (see module doc).
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": list(request.headers),
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 80),
        "state": {},
    }


class AsgiCall:
    """One request through the app; ``disconnect()`` tells the app its client left."""

    def __init__(self, app: ASGIApp, request: RelayRequest, sink: ResponseSink) -> None:
        self.app = app
        self.request = request
        self.sink = sink
        self._body_sent = False
        self._disconnected = asyncio.Event()

    def disconnect(self) -> None:
        self._disconnected.set()

    async def _receive(self) -> dict[str, Any]:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": self.request.body, "more_body": False}
        await self._disconnected.wait()
        return {"type": "http.disconnect"}

    async def run(self) -> None:
        scope = http_scope(self.request)
        self.sink.state = scope["state"]
        await self.app(scope, self._receive, self.sink.send)


async def call_json(app: ASGIApp, path: str, payload: dict[str, Any], timeout_s: float) -> tuple[int, Any]:
    """One POST of ``payload`` to ``app``, answered as (status, parsed JSON body): the replica's
    own calls (readiness and liveness probes), outside the request path."""
    body = bytearray()
    ended: list[ResponseEnd] = []

    def collect(event: Event) -> None:
        if isinstance(event, ResponseBody):
            body.extend(event.data)
        elif isinstance(event, ResponseEnd):
            ended.append(event)

    request = RelayRequest(f"internal-{time.monotonic_ns()}", path, json.dumps(payload).encode())
    sink = ResponseSink(0, request, collect)
    async with asyncio.timeout(timeout_s):
        await AsgiCall(app, request, sink).run()
    if ended and ended[0].error:
        raise RuntimeError(ended[0].error)
    return sink.status, json.loads(bytes(body)) if body else None
