"""Router-side dynamic batching: requests queue per model, a batch closes at ``max_batch_size`` or
``batch_timeout_ms`` (serve_app.core.batching), goes to ONE replica in ONE call, and each
request's chunks come back to its own caller.

Generation: vLLM batches continuously inside the engine, so for streaming generation batching
mostly saves router->replica calls; embeddings (many small requests) gain the most.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

from serve_app.config import ModelConfig
from serve_app.core.batching import AsyncBatcher
from serve_app.engine.types import EmbeddingRequest, EmbeddingResult, GenerationChunk, GenerationRequest, RequestError
from serve_app.observability.recorder import ServeAppMetrics
from serve_app.router.client import ReplicaClient, cancel_logged, spawn_detached

logger = logging.getLogger("serve_app.router")


@dataclass
class _GenerationJob:
    requests: list[GenerationRequest]
    out: asyncio.Queue[GenerationChunk | None] = field(default_factory=asyncio.Queue)
    abandoned: bool = False
    submitted_at: float = field(default_factory=time.monotonic)
    ended: set[int] = field(default_factory=set)  # indexes whose last chunk came

    def note(self, chunk: GenerationChunk) -> None:
        if chunk.finish_reason is not None or chunk.error is not None:
            self.ended.add(chunk.index)

    @property
    def running(self) -> bool:
        return len(self.ended) < len(self.requests)


@dataclass
class _EmbeddingJob:
    request: EmbeddingRequest
    result: asyncio.Future[EmbeddingResult]
    submitted_at: float = field(default_factory=time.monotonic)


def _failure(message: str) -> RequestError:
    return RequestError(503, message, type="service_unavailable")


class BatchDispatcher:
    def __init__(self, client: ReplicaClient, model: ModelConfig, metrics: ServeAppMetrics) -> None:
        self.client = client
        self.metrics = metrics
        self.model_id = model.id
        self._generation: AsyncBatcher[_GenerationJob] = AsyncBatcher.from_config(self._dispatch, model.batching)
        self._embedding: AsyncBatcher[_EmbeddingJob] = AsyncBatcher.from_config(self._dispatch_embed, model.batching)
        self._cancels: set[asyncio.Task[None]] = set()

    @property
    def queued(self) -> int:
        return self._generation.queued + self._embedding.queued

    async def stream(self, requests: list[GenerationRequest]) -> AsyncIterator[GenerationChunk]:
        job = _GenerationJob(requests)
        await self._generation.submit(job, cost=sum(r.cost_hint for r in requests))
        try:
            while (chunk := await job.out.get()) is not None:
                job.note(chunk)
                yield chunk
        finally:
            job.abandoned = True
            if job.running:  # the client went away: free its engine slots, the batch goes on
                # In a task of its own: this runs while the client's request is torn down.
                ids = [r.request_id for r in job.requests]
                spawn_detached(cancel_logged(self.client, self.model_id, ids), self._cancels)

    async def _dispatch(self, batch: list[_GenerationJob]) -> None:
        batch = [job for job in batch if not job.abandoned]  # clients that left while queued
        if not batch:
            return
        owners = [(job, i) for job in batch for i in range(len(job.requests))]
        flat = [r for job in batch for r in job.requests]
        self._record_dispatch(len(flat), [job.submitted_at for job in batch])
        stream = self.client.stream(self.model_id, flat)
        try:
            async for chunk in stream:
                job, own_index = owners[chunk.index]
                job.out.put_nowait(replace(chunk, index=own_index))
                if all(j.abandoned for j in batch):
                    break  # closing the stream cancels the replica call, which aborts the engine requests
        except (Exception, asyncio.CancelledError) as err:  # fails this batch's requests, not the router
            logger.warning("batch of %d failed: %r", len(flat), err)
            reason = str(err) or type(err).__name__
            for job in batch:
                for i in range(len(job.requests)):
                    job.out.put_nowait(GenerationChunk(index=i, error=_failure(f"batch failed: {reason}")))
            if isinstance(err, asyncio.CancelledError):
                raise
        finally:
            await stream.aclose()
            for job in batch:
                job.out.put_nowait(None)

    def _record_dispatch(self, batch_size: int, submitted_at: list[float]) -> None:
        now = time.monotonic()
        self.metrics.router_batch(self.model_id, batch_size)
        for at in submitted_at:
            self.metrics.queue_wait(self.model_id, max(0.0, now - at))

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        job = _EmbeddingJob(request, asyncio.get_running_loop().create_future())
        await self._embedding.submit(job, cost=request.cost_hint)
        return await job.result

    async def _dispatch_embed(self, batch: list[_EmbeddingJob]) -> None:
        try:
            await self._embed_batch(batch)
        finally:
            # Whatever ended the call (a cancelled replica call included), no request may wait
            # on its batch until the router's request timeout.
            for job in batch:
                if not job.result.done():
                    job.result.set_result(EmbeddingResult(error=_failure("the batch call was cancelled")))

    async def _embed_batch(self, batch: list[_EmbeddingJob]) -> None:
        inputs = tuple(text for job in batch for text in job.request.inputs)
        self._record_dispatch(len(batch), [job.submitted_at for job in batch])
        combined = EmbeddingRequest(batch[0].request.request_id + "-batch", self.model_id, inputs)
        try:
            result = await self.client.embed(self.model_id, combined)
        except Exception as err:
            result = EmbeddingResult(error=_failure(f"batch failed: {err}"))
        if result.error is not None and len(batch) > 1:
            # One bad input must fail only its own request: retry each request on its own.
            await asyncio.gather(*(self._embed_alone(job) for job in batch))
            return
        offset = 0
        for job in batch:
            n = len(job.request.inputs)
            vectors = result.vectors[offset : offset + n]
            offset += n
            share = result.prompt_tokens * n // max(1, len(inputs))
            if not job.result.done():
                job.result.set_result(EmbeddingResult(vectors=vectors, prompt_tokens=share, error=result.error))

    async def _embed_alone(self, job: _EmbeddingJob) -> None:
        try:
            result = await self.client.embed(self.model_id, job.request)
        except Exception as err:
            result = EmbeddingResult(error=_failure(f"embedding failed: {err}"))
        if not job.result.done():
            job.result.set_result(result)

    async def close(self) -> None:
        await self._generation.close()
        await self._embedding.close()
