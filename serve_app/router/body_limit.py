"""ASGI middleware capping request bodies (413), whether or not Content-Length is declared.

The body is read (up to the cap) before the app sees it: a request that grows past the cap while
the app is already parsing would otherwise surface as a parse error (400) instead of 413. Bodies
are small by construction (the cap), so buffering them costs little.
"""

from __future__ import annotations

from typing import Any

from serve_app.router.errors import OpenAIError

Scope = dict[str, Any]
Message = dict[str, Any]


class BodySizeLimit:
    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._reject(send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            message: Message = await receive()
            return message

        await self.app(scope, replay, send)

    async def _reject(self, send: Any) -> None:
        response = OpenAIError(413, f"request body exceeds {self.max_bytes} bytes", code="request_too_large").response()
        headers = [(k.encode(), v.encode()) for k, v in response.headers.items()]
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})
