"""ASGI middleware checking the request head before anything reads it: header count and size
(431) and the shape of a client's ``X-Request-Id`` (400).

uvicorn's parsers may accept far larger heads than any client needs; every header is decoded and
copied per request, so oversized heads are refused up front. Request ids travel into logs and
engine request ids, so only short printable ones are accepted.
"""

from __future__ import annotations

from typing import Any

from serve_app.core.request_id import REQUEST_ID_HEADER, is_valid_client_request_id
from serve_app.router.errors import OpenAIError


class RequestHeadLimits:
    def __init__(self, app: Any, max_header_bytes: int, max_headers: int) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers

    def _problem(self, headers: list[tuple[bytes, bytes]]) -> OpenAIError | None:
        if len(headers) > self.max_headers:
            return OpenAIError(431, f"more than {self.max_headers} request headers", code="headers_too_large")
        if sum(len(name) + len(value) + 4 for name, value in headers) > self.max_header_bytes:
            return OpenAIError(431, f"request headers exceed {self.max_header_bytes} bytes", code="headers_too_large")
        for name, value in headers:
            if name.lower() == REQUEST_ID_HEADER and not is_valid_client_request_id(value):
                return OpenAIError(
                    400,
                    "X-Request-Id must be 1 to 128 printable ASCII characters without spaces",
                    param="X-Request-Id",
                    code="invalid_request_id",
                )
        return None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            problem = self._problem(list(scope.get("headers") or []))
            if problem is not None:
                await problem.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)
