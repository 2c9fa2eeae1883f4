"""A replica's LoRA adapters: the static ones resolved and checked before the engine starts, and
those added at run time, loaded through vLLM's own ``/v1/load_lora_adapter`` (called in process,
like every request) the first time a request names one here.

Every adapter is checked before vLLM sees it (``serve_app.models.lora_adapters.adapter_problem``):
a missing folder, a rank above ``max_lora_rank`` or weights that do not fit the base are a 400
with the reason, and the replica and its other adapters go on serving.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from serve_app.config_engine import EngineConfig
from serve_app.errors import ServeAppError
from serve_app.models.lora_adapters import adapter_problem, resolve_adapter_path
from serve_app.observability.recorder import ServeAppMetrics
from serve_app.replica.asgi_call import AsgiCall, ResponseSink
from serve_app.replica.contract import LOADED_ON_HEADER, Event, RelayRequest, ResponseBody, ResponseEnd, ResponseStart

LOAD_PATH = "/v1/load_lora_adapter"
_TEXT = ((b"content-type", b"text/plain; charset=utf-8"),)


class AdapterError(ServeAppError, ValueError):
    """A static adapter that cannot be served: the replica does not start (a config error)."""


def with_local_adapters(model: EngineConfig, base: Path, cache_dir: Path | None) -> EngineConfig:
    """``model`` with its static adapters' paths resolved to local folders, each checked."""
    if model.lora is None or not model.lora.adapters:
        return model
    resolved, problems = [], []
    for adapter in model.lora.adapters:
        path = resolve_adapter_path(adapter.path, cache_dir)
        if problem := adapter_problem(path, model.lora.max_lora_rank, base):
            problems.append(f"models[{model.id}].lora.adapters[{adapter.name}]: {problem}")
        resolved.append(adapter.model_copy(update={"path": str(path)}))
    if problems:
        raise AdapterError("; ".join(problems))
    lora = model.lora.model_copy(update={"adapters": resolved})
    return model.model_copy(update={"lora": lora})


class _Answer:
    """What one in-process call to the server answered."""

    def __init__(self) -> None:
        self.start: ResponseStart | None = None
        self.body = bytearray()
        self.error: str | None = None

    def collect(self, event: Event) -> None:
        if isinstance(event, ResponseStart):
            self.start = event
        elif isinstance(event, ResponseBody):
            self.body.extend(event.data)
        elif isinstance(event, ResponseEnd) and event.error:
            self.error = event.error

    @property
    def status(self) -> int:
        return self.start.status if self.start else 502


def _error(status: int, message: str, error_type: str = "BadRequestError") -> tuple[int, tuple[Any, ...], bytes]:
    body = {"error": {"message": message, "type": error_type, "param": "lora_path", "code": status}}
    return status, ((b"content-type", b"application/json"),), json.dumps(body).encode()


class ReplicaAdapters:
    """Adapters loaded here at run time: name -> path (bounded by the router's
    ``lora.max_dynamic_adapters``; vLLM's ``max_cpu_loras`` bounds what its engine keeps loaded)."""

    def __init__(
        self,
        model: EngineConfig,
        base: Path,
        app: Any,
        metrics: ServeAppMetrics | None = None,
        replica_name: str = "local",
    ) -> None:
        self.model = model
        self.replica_name = replica_name  # named on a relayed load's answer (LOADED_ON_HEADER)
        self.base = base
        self.app = app
        self.metrics = metrics or ServeAppMetrics.disabled()
        self.loaded: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._cached: set[str] = set(self.static)  # vLLM loaded the static ones at start
        for name in self.static:
            self.metrics.adapter_loaded(model.id, name)

    def note_cached(self, adapters: list[str]) -> None:
        """The adapters the engine holds now (polled with the routing stats): those gone since the
        last poll were evicted from its cache."""
        now = set(adapters)
        for name in sorted(self._cached - now):
            self.metrics.adapter_evicted(self.model.id, name)
        self._cached = now

    @property
    def static(self) -> list[str]:
        return [a.name for a in self.model.lora.adapters] if self.model.lora else []

    def held(self) -> list[str]:
        """Every adapter this replica can serve without loading one."""
        return [*self.static, *self.loaded]

    async def ensure(self, name: str, path: str) -> tuple[int, tuple[Any, ...], bytes] | None:
        """Load ``name`` from ``path`` unless it is loaded from there already; None once it is,
        else the answer to give instead (status, headers, body)."""
        if self.loaded.get(name) == path or self.model.lora is None:
            return None
        async with self._locks.setdefault(name, asyncio.Lock()):
            if self.loaded.get(name) == path:
                return None
            answer = await self.load(name, path)
            return None if answer[0] == 200 else answer

    async def load(self, name: str, path: str) -> tuple[int, tuple[Any, ...], bytes]:
        """Check the folder, then load it with vLLM's own route; its answer (status, headers, body)."""
        if self.model.lora is None or not self.model.lora.dynamic:
            return _error(400, f"model {self.model.id!r} does not take adapters at run time", "InvalidUserInput")
        problem = await asyncio.to_thread(adapter_problem, Path(path), self.model.lora.max_lora_rank, self.base)
        if problem:
            self.metrics.adapter_load_failed(self.model.id)
            return _error(400, problem)
        payload = {"lora_name": name, "lora_path": path, "load_inplace": name in self.loaded}
        request = RelayRequest(f"adapter-load-{name}", LOAD_PATH, json.dumps(payload).encode())
        answer = _Answer()
        await AsgiCall(self.app, request, ResponseSink(0, request, answer.collect)).run()
        if answer.status == 200:
            self.loaded[name] = path
            self.metrics.adapter_loaded(self.model.id, name)
        else:
            self.metrics.adapter_load_failed(self.model.id)
        headers = answer.start.headers if answer.start and answer.start.headers else _TEXT
        return answer.status, headers, bytes(answer.body) or (answer.error or "").encode()

    async def answered(self, request: RelayRequest, sink: ResponseSink) -> bool:
        """Adapter work before a request reaches the server: a relayed load is answered here
        (True); a request naming an adapter added at run time has it loaded first, or gets the
        reason it cannot be (True); otherwise the server answers (False)."""
        if request.path == LOAD_PATH:  # only the router sends it (the server's own route is hidden)
            load = json.loads(request.body)
            status, headers, body = await self.load(str(load["lora_name"]), str(load["lora_path"]))
            if status == 200:
                headers = (*headers, (LOADED_ON_HEADER, self.replica_name.encode()))
        elif request.adapter_path and (refused := await self.ensure(request.adapter, request.adapter_path)):
            status, headers, body = refused
        else:
            return False
        await sink.send({"type": "http.response.start", "status": status, "headers": list(headers)})
        await sink.send({"type": "http.response.body", "body": body, "more_body": False})
        return True
