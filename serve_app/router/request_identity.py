"""ASGI middleware giving every HTTP request its id, its log line and its request metrics.

A pure ASGI middleware rather than Starlette's ``@app.middleware("http")``: that one
(``BaseHTTPMiddleware``) runs the app in a task of its own and relays every body chunk of a
streamed answer through an anyio memory stream, and the answer had to be wrapped to see its end.
Here the app runs in the request's own task (so the request-id log context covers the whole
stream) and the last body message is seen as it goes out (the measured effect on the router's CPU:
``benchmarks/results/stack-overhead/request-identity/``).

The request's ``state`` (Starlette keeps ``request.state`` in ``scope["state"]``) carries
``request_id`` and ``log`` for the routes; routes set ``model`` there for the metric label, and
``route`` where the label is not the matched route's template (the relaying catch-all route).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from serve_app.core.request_id import REQUEST_ID_HEADER, incoming_request_id, request_context, request_id_for
from serve_app.observability.logs import REQUEST_LOGGER_NAME, RequestLog

request_logger = logging.getLogger(REQUEST_LOGGER_NAME)
# Polled by load balancers and Kubernetes every few seconds: logged at DEBUG unless they fail.
PROBE_ROUTES = frozenset({"/health", "/ready"})

# (route, model label, status, seconds) once the answer's last byte is out
RequestFinished = Callable[[str, str, int, float], None]


class RequestIdentity:
    def __init__(
        self,
        app: Any,
        on_finished: RequestFinished,
        log_prompts: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.on_finished = on_finished
        self.log_prompts = log_prompts
        self.clock = clock  # monotonic seconds: the request's latency

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Ray Serve's proxy sets X-Request-Id on the request (the client's, which RequestHeadLimits
        # checks, or one of its own) and echoes it on the response; only when no one did (e.g.
        # in-process use) do we make one up and echo it ourselves.
        incoming = incoming_request_id(scope.get("headers") or [])
        rid = request_id_for(incoming)
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        state["log"] = log = RequestLog(rid, scope.get("method", ""), include_text=self.log_prompts)
        started = self.clock()
        status = 500
        done = False

        def finished() -> None:
            nonlocal done
            if done:
                return
            done = True
            # At the last byte of the answer: for a stream, when it ends, not when its headers go.
            route = state.get("route") or getattr(scope.get("route"), "path", "unmatched")
            model = state.get("model", "none")
            latency_s = self.clock() - started
            self.on_finished(route, model, status, latency_s)
            log.model = None if model == "none" else model
            log.write(request_logger, route, status, latency_s, quiet=route in PROBE_ROUTES)

        async def send_and_note(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if incoming is None:
                    message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER, rid.encode())]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                finished()

        with request_context(rid):  # other router lines logged for this request carry its id
            try:
                await self.app(scope, receive, send_and_note)
            finally:
                finished()  # the client left mid-answer, or the app raised (status stays 500)
