"""Router-side dynamic batching: requests queue per model, a batch closes at ``max_batch_size`` or
``batch_timeout_ms`` (serve_app.core.batching), goes to ONE replica in ONE call, and each
request's events come back to its own caller, which is done when its own response ends.

vLLM batches continuously inside the engine, so a router batch does not change what the engine
computes: it saves router->replica calls and Ray messages (a batch's events travel as one message
per engine step), which is what the router's and the proxy's CPU pay for at high concurrency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

from serve_app.config_model import BatchingConfig
from serve_app.core.batching import AsyncBatcher
from serve_app.observability.recorder import ServeAppMetrics
from serve_app.replica.contract import Event, RelayRequest, ResponseEnd
from serve_app.router.client import ReplicaClient, cancel_logged, spawn_detached

logger = logging.getLogger("serve_app.router")


@dataclass
class _Job:
    request: RelayRequest
    submitted_at: float
    out: asyncio.Queue[list[Event] | None] = field(default_factory=asyncio.Queue)
    dispatched: bool = False
    abandoned: bool = False  # its client went away
    ended: bool = False  # its ResponseEnd came (and is queued in ``out``)


class BatchDispatcher:
    def __init__(
        self,
        client: ReplicaClient,
        model_id: str,
        batching: BatchingConfig,
        metrics: ServeAppMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.metrics = metrics
        self.model_id = model_id
        self.clock = clock  # monotonic seconds: batch deadlines and queue waits
        self._batcher: AsyncBatcher[_Job] = AsyncBatcher.from_config(self._dispatch, batching, clock)
        self._cancels: set[asyncio.Task[None]] = set()

    @property
    def queued(self) -> int:
        return self._batcher.queued

    async def stream(self, request: RelayRequest) -> AsyncGenerator[list[Event], None]:
        """This request's events, ending with its own ``ResponseEnd``."""
        job = _Job(request, self.clock())
        await self._batcher.submit(job, cost=request.cost_hint)
        try:
            while (events := await job.out.get()) is not None:
                yield events
                # Its own end, not ``job.ended``: that is set when the end is queued, maybe behind
                # event lists this consumer has yet to read.
                if any(isinstance(e, ResponseEnd) for e in events):
                    return
        finally:
            job.abandoned = True
            if job.dispatched and not job.ended:  # the client went away: free its engine slot
                # In a task of its own: this runs while the client's request is torn down.
                ids = [request.request_id]
                spawn_detached(cancel_logged(self.client, self.model_id, ids), self._cancels)

    async def _dispatch(self, batch: list[_Job]) -> None:
        batch = [job for job in batch if not job.abandoned]  # clients that left while queued
        if not batch:
            return
        for job in batch:
            job.dispatched = True
        self._record_dispatch(len(batch), [job.submitted_at for job in batch])
        stream = self.client.stream(self.model_id, [job.request for job in batch])
        try:
            async for events in stream:
                self._deliver(batch, events)
                if all(job.ended or job.abandoned for job in batch):
                    break  # closing the stream cancels the replica call and what still runs there
        except (Exception, asyncio.CancelledError) as err:  # fails this batch's requests, not the router
            logger.warning("batch of %d failed: %r", len(batch), err)
            for job in batch:
                if not job.ended:
                    job.out.put_nowait([ResponseEnd(0, error=f"batch failed: {err!r}"[:300], status=503)])
            if isinstance(err, asyncio.CancelledError):
                raise
        finally:
            await stream.aclose()
            for job in batch:
                job.out.put_nowait(None)

    @staticmethod
    def _deliver(batch: list[_Job], events: list[Event]) -> None:
        by_job: dict[int, list[Event]] = {}
        for event in events:
            by_job.setdefault(event.index, []).append(event)
        for index, own in by_job.items():
            job = batch[index]
            if job.ended:
                continue
            job.ended = any(isinstance(e, ResponseEnd) for e in own)
            job.out.put_nowait(own)

    def _record_dispatch(self, batch_size: int, submitted_at: list[float]) -> None:
        now = self.clock()
        self.metrics.router_batch(self.model_id, batch_size)
        for at in submitted_at:
            self.metrics.queue_wait(self.model_id, max(0.0, now - at))

    async def close(self) -> None:
        await self._batcher.close()
