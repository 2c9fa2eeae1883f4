"""The LLM replica: a Ray Serve deployment hosting one engine and vLLM's OpenAI server over it.

The class is plain Python; ``serve_app.app`` wraps it with ``serve.deployment`` at build time, so
importing this module starts nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from serve_app.core.autoscaling import ReplicaSignals
from serve_app.core.policies import ROUTING_STAT_ADAPTERS
from serve_app.engine.protocol import Engine
from serve_app.engine.types import EngineDeadError
from serve_app.observability.logs import ReplicaRequestLog, install_json_logging
from serve_app.observability.recorder import ServeAppMetrics
from serve_app.replica.adapters import ReplicaAdapters, with_local_adapters
from serve_app.replica.asgi_call import AsgiCall, ResponseSink, call_json
from serve_app.replica.child_reaper import start_child_reaper
from serve_app.replica.contract import (
    BatchOpened,
    CancelRequests,
    Event,
    RelayRequest,
    ResponseBody,
    ResponseEnd,
)
from serve_app.replica.cpu_policy import apply_cpu_scheduling, apply_cpu_scheduling_to_tree
from serve_app.replica.engine_start import EngineFactory, resolve_model_path, vllm_engine_factory
from serve_app.replica.parts import ReplicaParts
from serve_app.replica.server_routes import ServerRoutes

logger = logging.getLogger("serve_app.replica")

_ENGINE_FAILED = "the engine failed its health check; the replica is being replaced, retry"
# After a stream is closed, how long its requests get to see the disconnect and abort their
# engine requests before their tasks are cancelled outright.
_DISCONNECT_GRACE_S = 5.0


def _replica_name() -> str:
    from ray import serve

    return serve.get_replica_context().replica_id.unique_id


class LLMReplica:
    """One engine per replica. Methods are called through Ray Serve handles by the router."""

    async def __init__(  # type: ignore[misc]  # Ray Serve awaits an async constructor
        self,
        parts: ReplicaParts,
        cache_dir: str | None = None,
        engine_factory: EngineFactory | None = None,
        drain_timeout_s: float = 60.0,
        export_metrics: bool = False,
        json_logs: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if json_logs:
            install_json_logging()  # serve_app.observability.logs says why not Ray Serve's JSON encoding
        self.clock = clock  # monotonic seconds: progress (check_health) and request logs
        self.metrics = ServeAppMetrics.for_ray() if export_metrics else ServeAppMetrics.disabled()
        self.replica_name = _replica_name() if export_metrics else "local"  # cancel calls target it
        self.drain_timeout_s = drain_timeout_s
        self._inflight: dict[str, int] = {}  # request id -> expected tokens
        self._calls: dict[str, AsgiCall] = {}  # request id -> its running call into the server
        self._left: set[str] = set()  # request ids whose client left (their calls were disconnected)
        self._shutting_down = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_progress = self.clock()  # the last bytes out of the server (see check_health)
        self._engine_failed = False  # set when check_health fails: nothing left to drain
        path = await asyncio.to_thread(resolve_model_path, parts.engine, cache_dir)
        # Static LoRA adapters resolved to local folders and checked before the engine starts.
        local = await asyncio.to_thread(with_local_adapters, parts.engine, path, Path(cache_dir) if cache_dir else None)
        self.engine_config, self.health = local, parts.health
        # Before the engine starts, so that its processes inherit the policy.
        apply_cpu_scheduling(parts.cpu_scheduling)
        if engine_factory is None:  # vLLM's engine core is a child process that outlives a killed replica
            self._child_reaper = start_child_reaper()  # held: a Popen collected while it runs warns
        self.engine: Engine = (engine_factory or vllm_engine_factory)(replace(parts, engine=local), path)
        started = self.clock()
        await self.engine.start()
        apply_cpu_scheduling_to_tree(parts.cpu_scheduling)  # serve_app.replica.cpu_policy says why again
        self.routes = ServerRoutes.of(self.engine.app)
        self.adapters = ReplicaAdapters(local, path, self.engine.app, self.metrics, self.replica_name)
        logger.info("model %s ready in %.1f s from %s", local.id, self.clock() - started, path)

    async def stream(self, requests: list[RelayRequest]) -> AsyncIterator[BatchOpened | list[Event]]:
        """Answer a router batch: every request runs concurrently in the server (the engine batches
        them continuously). A batch of several first names this replica (``cancel`` calls for its
        members come here); then every message is a list of the events that arrived together, so
        Ray's per-message cost is paid once per engine step, not once per request and step. Each
        request's ``ResponseEnd`` comes as soon as that request ends."""
        queue: asyncio.Queue[Event] = asyncio.Queue()
        tasks = [asyncio.create_task(self._serve(i, r, queue.put_nowait)) for i, r in enumerate(requests)]
        remaining = len(tasks)
        try:
            if len(requests) > 1:
                yield BatchOpened(self.replica_name)
            while remaining:
                events = [await queue.get()]
                while not queue.empty():
                    events.append(queue.get_nowait())
                remaining -= sum(1 for e in events if isinstance(e, ResponseEnd))
                yield events
        finally:
            await self._stop(requests, tasks)

    async def _stop(self, requests: list[RelayRequest], tasks: list[asyncio.Task[None]]) -> None:
        """The stream was closed: requests still running lost their client."""
        for request in requests:
            if (call := self._calls.get(request.request_id)) is not None:
                self._left.add(request.request_id)
                call.disconnect()
        pending = [t for t in tasks if not t.done()]
        if pending:
            _, pending_set = await asyncio.wait(pending, timeout=_DISCONNECT_GRACE_S)
            for task in pending_set:
                task.cancel()

    async def cancel(self, request: CancelRequests) -> int:
        """Abort requests of running batches (the engine frees their slots); the others go on.
        Returns how many were still running here."""
        running = {rid: call for rid in request.request_ids if (call := self._calls.get(rid)) is not None}
        self._left.update(running)
        for call in running.values():
            call.disconnect()
        return len(running)

    async def _serve(self, index: int, request: RelayRequest, emit: Callable[[Event], None]) -> None:
        log = ReplicaRequestLog(
            request.request_id, request.path, self.engine_config.id, self.replica_name, self.clock()
        )

        def emit_and_note(event: Event) -> None:
            if isinstance(event, ResponseBody):
                self._last_progress = self.clock()
            emit(event)

        sink = ResponseSink(index, request, emit_and_note)
        try:
            await self._answer(request, sink)
        finally:
            # 499 (client closed request): the answer stopped because its client left.
            left = request.request_id in self._left
            self._left.discard(request.request_id)
            cut = "the client left" if left else "the server ended the response before its last byte"
            sink.end(error=cut, status=499 if left else 502)
            log.status, log.error = (499 if left else sink.status), sink.error
            log.prompt_tokens, log.completion_tokens = sink.prompt_tokens, sink.completion_tokens
            log.finish_reason = sink.finish_reason
            log.write(logger, self.clock())

    async def _answer(self, request: RelayRequest, sink: ResponseSink) -> None:
        if self._shutting_down or self._engine_failed or not await self._engine_alive():
            reason = "replica is shutting down" if self._shutting_down else _ENGINE_FAILED
            sink.end(error=reason, status=503)
            return
        if await self.adapters.answered(request, sink):
            return
        if not self.routes.serves(request.method, request.path):
            await self.routes.refuse(sink, request.method, request.path)
            return
        if not self._inflight:
            self._last_progress = self.clock()  # an idle engine owes no progress until now
        self._inflight[request.request_id] = request.cost_hint
        self._idle.clear()
        call = AsgiCall(self.engine.app, request, sink)
        self._calls[request.request_id] = call
        try:
            await call.run()
        except Exception as err:  # vLLM answers its own errors; this is a server bug or a dead engine
            logger.exception("request %s failed in the server", request.request_id)
            if await self._engine_alive():
                sink.end(error=f"the model server failed: {type(err).__name__}: {err}"[:500], status=500)
            else:
                sink.end(error=_ENGINE_FAILED, status=503)
        finally:
            self._calls.pop(request.request_id, None)
            self._inflight.pop(request.request_id, None)
            if not self._inflight:
                self._idle.set()

    async def _engine_alive(self) -> bool:
        """False once the engine is dead (its own flag, e.g. its process gone: cheap, no engine
        step): from then on requests get 503, a replica-is-being-replaced answer, instead of the
        500s vLLM's server gives for a dead engine until Serve's next health check."""
        try:
            await self.engine.check_health()
        except EngineDeadError:
            self._engine_failed = True
            return False
        return True

    async def call_json(self, path: str, payload: dict[str, Any], timeout_s: float) -> tuple[int, Any]:
        """One request to this replica's server, answered as (status, parsed JSON body)."""
        return await call_json(self.engine.app, path, payload, timeout_s)

    async def probe(self, prompt: str, max_tokens: int = 16) -> str:
        """A short greedy generation: the readiness check that the model really answers."""
        if self.engine_config.task == "embed":
            status, body = await self.call_json(
                "/v1/embeddings", {"model": self.engine_config.id, "input": prompt}, self.health.readiness_timeout_s
            )
            return "ok" if status == 200 and body["data"][0]["embedding"] else ""
        payload = {
            "model": self.engine_config.id,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0.0,
        }
        status, body = await self.call_json("/v1/chat/completions", payload, self.health.readiness_timeout_s)
        if status != 200:
            raise RuntimeError(f"status {status}: {body}")
        return str(body["choices"][0]["message"]["content"] or "")

    async def check_health(self) -> None:
        """Called periodically by Ray Serve; raising makes Serve replace this replica.

        The engine's own check only sees a dead engine. A hung one (a step that never returns: a
        stuck kernel, a stopped process) passes it while every request on this replica waits
        forever, so the replica also checks progress: with requests in flight, some bytes within
        ``engine_stall_timeout_s``; idle, a one-token generation within that time.
        """
        try:
            await self.engine.check_health()
            if self._shutting_down:
                return
            stall_s = self.health.engine_stall_timeout_s
            if self._inflight:
                silent_s = self.clock() - self._last_progress
                if silent_s > stall_s:
                    raise EngineDeadError(f"engine made no progress for {silent_s:.0f} s ({len(self._inflight)} reqs)")
            elif self.engine_config.task == "generate":
                await self._liveness_probe(stall_s)
        except EngineDeadError:
            # Fail what waits on this engine now (the disconnect aborts each request, whose
            # response then ends with an error) and refuse new work, rather than hold requests
            # until Serve, after three failed checks, stops the replica and waits out its graceful
            # shutdown timeout for requests that will never finish.
            self._engine_failed = True
            for call in list(self._calls.values()):
                call.disconnect()
            raise
        self._engine_failed = False  # a passing check (e.g. after a slow spell) takes work again

    async def _liveness_probe(self, timeout_s: float) -> None:
        # Straight to the server: not counted as load, not refused while draining.
        payload = {"model": self.engine_config.id, "prompt": "Hi", "max_tokens": 1, "temperature": 0.0}
        try:
            await self.call_json("/v1/completions", payload, timeout_s)
        except TimeoutError:
            raise EngineDeadError(f"engine produced no token within {timeout_s:g} s while idle") from None

    async def record_routing_stats(self) -> dict[str, Any]:
        """Called by Ray Serve every couple of seconds: routing load, the adapters the engine
        holds (adapter affinity), and the engine gauges."""
        stats = self.engine.stats()
        adapters = await self.engine.loaded_adapters() if self.engine_config.lora else []
        self.adapters.note_cached(adapters)
        outstanding_tokens = sum(self._inflight.values())
        self.metrics.engine_stats(self.engine_config.id, self.replica_name, stats)
        self.metrics.replica_load(self.engine_config.id, self.replica_name, len(self._inflight), outstanding_tokens)
        return {
            "outstanding_requests": len(self._inflight),
            "outstanding_tokens": outstanding_tokens,
            "running": stats.running,
            "waiting": stats.waiting,
            "kv_cache_usage": stats.kv_cache_usage,
            ROUTING_STAT_ADAPTERS: adapters,
        }

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Engine signals for the autoscaling policy (serve_app.replica.autoscaling_policy)."""
        stats = self.engine.stats()
        return ReplicaSignals(len(self._inflight), stats.waiting, stats.kv_cache_usage).as_stats()

    async def engine_stats(self) -> dict[str, Any]:
        return await self.record_routing_stats() | {"prefix_cache_hit_rate": self.engine.stats().prefix_cache_hit_rate}

    def __del__(self) -> Any:
        """Ray Serve awaits what this returns on graceful shutdown. Returning the coroutine (rather
        than being ``async``) lets garbage collection of an already stopped replica do nothing."""
        if getattr(self, "_shutting_down", True):
            return None
        self._shutting_down = True
        return self._drain_and_stop()

    async def _drain_and_stop(self) -> None:
        """Refuse new work, let in-flight requests finish (bounded), then stop the engine.

        A replica stopped because its engine failed the health check does not wait: a hung engine
        will not finish anything, and its requests fail over (the router retries those without a
        first byte on another replica) only once this replica is gone."""
        if self._engine_failed:
            logger.warning("engine failed its health check: stopping with %d requests in flight", len(self._inflight))
        else:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout=self.drain_timeout_s)
            except TimeoutError:
                logger.warning("drain timed out with %d requests in flight", len(self._inflight))
        await self.engine.shutdown()
