"""The LLM replica: a Ray Serve deployment hosting one engine.

The class is plain Python; ``serve_app.app`` wraps it with ``serve.deployment`` at build time, so
importing this module starts nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from serve_app.config import ModelConfig
from serve_app.core.autoscaling import ReplicaSignals
from serve_app.core.coalesce import coalesced
from serve_app.engine.protocol import Engine
from serve_app.engine.types import (
    BatchOpened,
    CancelRequests,
    EmbeddingRequest,
    EmbeddingResult,
    EngineDeadError,
    EngineRequestError,
    GenerationChunk,
    GenerationRequest,
    RequestError,
    SamplingOptions,
    merge_chunks,
)
from serve_app.observability.logs import GenerationLog, install_json_logging
from serve_app.observability.recorder import ServeAppMetrics

logger = logging.getLogger("serve_app.replica")

_ENGINE_FAILED = "the engine failed its health check; the replica is being replaced, retry"

EngineFactory = Callable[[ModelConfig, Path], Engine]


def vllm_engine_factory(config: ModelConfig, path: Path) -> Engine:
    from serve_app.engine.vllm_engine import VllmEngine

    return VllmEngine(config, path)


def _replica_name() -> str:
    from ray import serve

    return serve.get_replica_context().replica_id.unique_id


def resolve_model_path(config: ModelConfig, cache_dir: str | None) -> Path:
    """The model folder on this node; a quantized one must pass the deployment gate here too,
    since the app may have been built where the folder was not readable."""
    from serve_app.models.embedded import resolve_source
    from serve_app.quantize.gate import check_deployable

    path = resolve_source(config.source, Path(cache_dir) if cache_dir else None)
    check_deployable(config, path)
    return path


class LLMReplica:
    """One engine per replica. Methods are called through Ray Serve handles by the router."""

    async def __init__(
        self,
        model: ModelConfig,
        cache_dir: str | None = None,
        engine_factory: EngineFactory | None = None,
        drain_timeout_s: float = 60.0,
        export_metrics: bool = False,
        json_logs: bool = False,
    ) -> None:
        if json_logs:
            install_json_logging()  # serve_app.observability.logs says why not Ray Serve's JSON encoding
        self.model = model
        self.metrics = ServeAppMetrics.for_ray() if export_metrics else ServeAppMetrics.disabled()
        self.replica_name = _replica_name() if export_metrics else "local"  # cancel calls target it
        self.drain_timeout_s = drain_timeout_s
        self._inflight: dict[str, int] = {}  # request id -> expected tokens (prompt + max_tokens)
        self._batch_tasks: dict[str, asyncio.Task[None]] = {}  # request id in a router batch -> its task
        self._shutting_down = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_progress = time.monotonic()  # the last chunk out of the engine (see check_health)
        self._engine_failed = False  # set when check_health fails: nothing left to drain
        path = await asyncio.to_thread(resolve_model_path, model, cache_dir)
        self.engine: Engine = (engine_factory or vllm_engine_factory)(model, path)
        started = time.monotonic()
        await self.engine.start()
        logger.info("model %s ready in %.1f s from %s", model.id, time.monotonic() - started, path)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream one completion. Client-facing errors come back as a chunk with ``error`` set
        (not an exception) so the router can map them without unpicking Ray's error wrappers."""
        async for chunk in coalesced(self._logged(request, index=0), merge_chunks):
            yield chunk

    async def generate_batch(
        self, requests: list[GenerationRequest]
    ) -> AsyncIterator[BatchOpened | list[GenerationChunk]]:
        """Stream a router batch: every request runs concurrently in the engine (which batches them
        continuously). The first message names this replica (``cancel`` calls for single requests
        of the batch come here); every other message is a list of the chunks that arrived together
        (typically one engine step of all the batch's requests), tagged with each request's index
        in the batch, so Ray's per-message cost (serialization, an object, a wake-up on each side)
        is paid once per step, not once per request and step."""
        queue: asyncio.Queue[GenerationChunk | None] = asyncio.Queue()

        async def pump(i: int, req: GenerationRequest) -> None:
            try:
                async for chunk in self._logged(req, index=i):
                    queue.put_nowait(chunk)
            finally:
                queue.put_nowait(None)

        tasks = {r.request_id: asyncio.create_task(pump(i, r)) for i, r in enumerate(requests)}
        self._batch_tasks.update(tasks)
        remaining = len(tasks)
        try:
            yield BatchOpened(self.replica_name)
            while remaining:
                items = [await queue.get()]
                while not queue.empty():
                    items.append(queue.get_nowait())
                remaining -= sum(1 for item in items if item is None)
                chunks = merge_chunks([item for item in items if item is not None])
                if chunks:
                    yield chunks
        finally:
            for rid, task in tasks.items():
                task.cancel()
                self._batch_tasks.pop(rid, None)
            await asyncio.gather(*tasks.values(), return_exceptions=True)

    async def cancel(self, request: CancelRequests) -> int:
        """Abort requests of running batches (the engine frees their slots); the others go on.
        Returns how many were still running here."""
        running = [t for rid in request.request_ids if (t := self._batch_tasks.get(rid)) and not t.done()]
        for task in running:
            task.cancel()
        return len(running)

    async def _logged(self, request: GenerationRequest, index: int) -> AsyncIterator[GenerationChunk]:
        """``_stream`` plus one log line when the generation ends, keyed by the client's request id
        (readiness probes call ``_stream`` directly and stay out of the log)."""
        log = GenerationLog(request.request_id, self.model.id, self.replica_name, time.monotonic())
        try:
            async for chunk in self._stream(request, index):
                log.add(chunk)
                yield chunk
        finally:
            log.write(logger, time.monotonic())

    async def _stream(self, request: GenerationRequest, index: int) -> AsyncIterator[GenerationChunk]:
        if self._shutting_down or self._engine_failed:
            reason = "replica is shutting down" if self._shutting_down else _ENGINE_FAILED
            yield GenerationChunk(index=index, error=RequestError(503, reason, type="service_unavailable"))
            return
        if not self._inflight:
            self._last_progress = time.monotonic()  # an idle engine owes no progress until now
        self._inflight[request.request_id] = request.cost_hint
        self._idle.clear()
        try:
            async for chunk in self.engine.generate(request):
                if self._engine_failed:  # aborted by check_health: an error, not a short answer
                    yield GenerationChunk(
                        index=index, error=RequestError(503, _ENGINE_FAILED, type="service_unavailable")
                    )
                    return
                self._last_progress = time.monotonic()
                chunk.index = index
                yield chunk
        except EngineRequestError as err:
            yield GenerationChunk(index=index, error=err.error)
        except EngineDeadError as err:
            yield GenerationChunk(
                index=index, error=RequestError(503, f"engine failed: {err}", type="service_unavailable")
            )
        finally:
            self._inflight.pop(request.request_id, None)
            if not self._inflight:
                self._idle.set()

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        try:
            return await self.engine.embed(request)
        except EngineRequestError as err:
            return EmbeddingResult(error=err.error)

    async def probe(self, prompt: str, max_tokens: int = 16) -> str:
        """A short greedy generation: the readiness check that the model really answers."""
        if self.model.task == "embed":
            result = await self.embed(EmbeddingRequest(f"probe-{time.monotonic_ns()}", self.model.id, (prompt,)))
            return "ok" if result.vectors and result.vectors[0] else ""
        request = GenerationRequest(
            f"probe-{time.monotonic_ns()}",
            self.model.id,
            SamplingOptions(max_tokens=max_tokens, temperature=0.0),
            messages=({"role": "user", "content": prompt},),
        )
        parts = []
        async for chunk in self._stream(request, index=0):
            if chunk.error:
                raise RuntimeError(chunk.error.message)
            parts.append(chunk.text)
        return "".join(parts)

    async def check_health(self) -> None:
        """Called periodically by Ray Serve; raising makes Serve replace this replica.

        The engine's own check only sees a dead engine. A hung one (a step that never returns: a
        stuck kernel, a stopped process) passes it while every request on this replica waits
        forever, so the replica also checks progress: with requests in flight, some chunk within
        ``engine_stall_timeout_s``; idle, a one-token generation within that time.
        """
        try:
            await self.engine.check_health()
            if self._shutting_down:
                return
            stall_s = self.model.engine_stall_timeout_s
            if self._inflight:
                silent_s = time.monotonic() - self._last_progress
                if silent_s > stall_s:
                    raise EngineDeadError(f"engine made no progress for {silent_s:.0f} s ({len(self._inflight)} reqs)")
            elif self.model.task == "generate":
                await self._liveness_probe(stall_s)
        except EngineDeadError:
            # Fail what waits on this engine now (the abort wakes each request's stream, which then
            # ends with a 503) and refuse new work, rather than hold requests until Serve, after
            # three failed checks, stops the replica and waits out its graceful shutdown timeout
            # for requests that will never finish.
            self._engine_failed = True
            for request_id in list(self._inflight):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.engine.abort(request_id), timeout=5.0)
            raise
        self._engine_failed = False  # a passing check (e.g. after a slow spell) takes work again

    async def _liveness_probe(self, timeout_s: float) -> None:
        # Straight to the engine: not counted as load, not refused while draining.
        request = GenerationRequest(
            f"liveness-{time.monotonic_ns()}", self.model.id, SamplingOptions(max_tokens=1, temperature=0.0), "Hi"
        )
        try:
            async with asyncio.timeout(timeout_s):
                async for _ in self.engine.generate(request):
                    pass
        except TimeoutError:
            raise EngineDeadError(f"engine produced no token within {timeout_s:g} s while idle") from None

    def record_routing_stats(self) -> dict[str, Any]:
        """Called by Ray Serve every couple of seconds: routing load, and the engine gauges."""
        stats = self.engine.stats()
        outstanding_tokens = sum(self._inflight.values())
        self.metrics.engine_stats(self.model.id, self.replica_name, stats)
        self.metrics.replica_load(self.model.id, self.replica_name, len(self._inflight), outstanding_tokens)
        return {
            "outstanding_requests": len(self._inflight),
            "outstanding_tokens": outstanding_tokens,
            "running": stats.running,
            "waiting": stats.waiting,
            "kv_cache_usage": stats.kv_cache_usage,
        }

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Engine signals for the autoscaling policy (serve_app.replica.autoscaling_policy)."""
        stats = self.engine.stats()
        return ReplicaSignals(len(self._inflight), stats.waiting, stats.kv_cache_usage).as_stats()

    def engine_stats(self) -> dict[str, Any]:
        return self.record_routing_stats() | {"prefix_cache_hit_rate": self.engine.stats().prefix_cache_hit_rate}

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
        first token on another replica) only once this replica is gone."""
        if self._engine_failed:
            logger.warning("engine failed its health check: stopping with %d requests in flight", len(self._inflight))
        else:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout=self.drain_timeout_s)
            except TimeoutError:
                logger.warning("drain timed out with %d requests in flight", len(self._inflight))
        await self.engine.shutdown()
