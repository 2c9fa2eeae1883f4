"""Which of the model server's routes a replica answers, and its own OpenAI-shaped errors."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from serve_app.replica.asgi_call import ResponseSink

# Routes of vLLM's server that operate the server rather than answer clients (metrics, health,
# profiling, sleep, adapter loading, ...): the router and the replica own those concerns.
_OPERATOR_ROUTES = re.compile(
    r"^/(metrics|health|ping|load|version|server_info|reset_prefix_cache|reset_mm_cache|sleep|wake_up|is_sleeping"
    r"|collective_rpc|scale_elastic_ep|is_scaling_elastic_ep|pause|resume|is_paused|start_profile|stop_profile"
    r"|v1/load_lora_adapter|v1/unload_lora_adapter|update_weights|init_weight_transfer.*|get_world_size"
    r"|docs.*|redoc.*|openapi.json)$"
)


@dataclass(frozen=True)
class ServerRoutes:
    """(method set, path pattern) of every client route the server has."""

    routes: tuple[tuple[frozenset[str], re.Pattern[str]], ...]

    @classmethod
    def of(cls, app: Any) -> ServerRoutes:
        found = []
        for route in getattr(app, "routes", ()):
            path, methods = getattr(route, "path", None), getattr(route, "methods", None)
            if path is None or not methods or _OPERATOR_ROUTES.match(path):
                continue
            found.append((frozenset(methods), route.path_regex))
        return cls(tuple(found))

    def serves(self, method: str, path: str) -> bool:
        # Every request asks this: stop at the first matching route (``methods`` collects them all
        # and is only needed to explain a refusal).
        path = path.partition("?")[0]
        return any(method in methods and pattern.match(path) for methods, pattern in self.routes)

    def methods(self, path: str) -> frozenset[str]:
        """The methods the server answers on this path (none: the path is not a client route)."""
        path = path.partition("?")[0]
        return frozenset().union(*(methods for methods, pattern in self.routes if pattern.match(path)))

    async def refuse(self, sink: ResponseSink, method: str, path: str) -> None:
        """404 for a path the server lacks or hides, 405 (with ``Allow``) for a method it lacks there."""
        allowed = self.methods(path)
        if not allowed:
            await error_response(sink, 404, f"{method} {path} is not served", "NotFoundError")
            return
        allow = [(b"allow", ", ".join(sorted(allowed)).encode())]
        await error_response(sink, 405, f"{method} is not allowed on {path}", "MethodNotAllowed", allow)


async def error_response(
    sink: ResponseSink, status: int, message: str, error_type: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """An answer in the shape vLLM gives its own errors."""
    body = {"error": {"message": message, "type": error_type, "param": None, "code": status}}
    head = [(b"content-type", b"application/json"), *(headers or [])]
    await sink.send({"type": "http.response.start", "status": status, "headers": head})
    await sink.send({"type": "http.response.body", "body": json.dumps(body).encode(), "more_body": False})
