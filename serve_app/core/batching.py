"""Router-side dynamic batching: group requests of similar cost into one call to one replica.

A batch closes when it holds ``max_batch_size`` requests or ``batch_timeout_s`` after its first
request arrived, whichever comes first. With ``length_bins`` each request goes to the first bin
whose threshold is >= its cost (prompt tokens + max_tokens; the last bin is open-ended), so one
batch never mixes a 20-token request with a 4000-token one (the short one would wait for the long
one's slot in every engine step).

:class:`BatchQueue` is the synchronous core, driven by an injectable clock so that tests need no
event loop; :class:`AsyncBatcher` runs it on asyncio and hands closed batches to a callback.
"""

from __future__ import annotations

import asyncio
import bisect
import contextvars
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from serve_app.config import BatchingConfig

T = TypeVar("T")
Clock = Callable[[], float]
DispatchFn = Callable[[list[T]], Awaitable[None]]

logger = logging.getLogger("serve_app.batching")


@dataclass
class _Pending(Generic[T]):
    item: T
    arrived_at: float


@dataclass
class _Bin(Generic[T]):
    items: deque[_Pending[T]] = field(default_factory=deque)


class BatchQueue(Generic[T]):
    """Pending requests grouped into length bins; closed batches come out of :meth:`pop_ready`.

    Not thread-safe: it belongs to one event loop (or one test).
    """

    def __init__(
        self,
        max_batch_size: int,
        batch_timeout_s: float,
        length_bins: Sequence[int] = (),
        clock: Clock = time.monotonic,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if batch_timeout_s < 0:
            raise ValueError("batch_timeout_s must be >= 0")
        if any(b <= 0 for b in length_bins) or list(length_bins) != sorted(set(length_bins)):
            raise ValueError("length_bins must be strictly increasing positive token counts")
        self.max_batch_size = max_batch_size
        self.batch_timeout_s = batch_timeout_s
        self.length_bins = tuple(length_bins)
        self._clock = clock
        # One bin per threshold plus the open-ended last bin.
        self._bins: list[_Bin[T]] = [_Bin() for _ in range(len(self.length_bins) + 1)]
        self._queued = 0

    @classmethod
    def from_config(cls, config: BatchingConfig, clock: Clock = time.monotonic) -> BatchQueue[T]:
        return cls(config.max_batch_size, config.batch_timeout_ms / 1000.0, config.length_bins, clock)

    @property
    def immediate(self) -> bool:
        """Every request is its own batch: nothing ever waits."""
        return self.max_batch_size == 1 or self.batch_timeout_s == 0

    @property
    def queued(self) -> int:
        return self._queued

    def bin_index(self, cost: int) -> int:
        """The first bin whose threshold is >= cost; costs above every threshold go to the last bin."""
        return bisect.bisect_left(self.length_bins, cost)

    def put(self, item: T, cost: int) -> None:
        if cost < 0:
            raise ValueError(f"cost must be >= 0, got {cost}")
        self._bins[self.bin_index(cost)].items.append(_Pending(item, self._clock()))
        self._queued += 1

    def pop_ready(self, now: float | None = None) -> list[list[T]]:
        """Every batch that is full or whose first request has waited ``batch_timeout_s``."""
        now = self._clock() if now is None else now
        ready: list[list[T]] = []
        for bin_ in self._bins:
            while bin_.items and (len(bin_.items) >= self.max_batch_size or self._expired(bin_, now)):
                ready.append(self._take(bin_))
        return ready

    def next_deadline(self) -> float | None:
        """When :meth:`pop_ready` next returns something (a time in the past if it already would);
        None when nothing is queued."""
        deadlines = [
            b.items[0].arrived_at + (0.0 if len(b.items) >= self.max_batch_size else self.batch_timeout_s)
            for b in self._bins
            if b.items
        ]
        return min(deadlines, default=None)

    def drain(self) -> list[list[T]]:
        """Everything queued, as batches, regardless of deadlines (for shutdown)."""
        batches: list[list[T]] = []
        for bin_ in self._bins:
            while bin_.items:
                batches.append(self._take(bin_))
        return batches

    def _expired(self, bin_: _Bin[T], now: float) -> bool:
        # The batch's clock starts with its first (oldest) request.
        return now >= bin_.items[0].arrived_at + self.batch_timeout_s

    def _take(self, bin_: _Bin[T]) -> list[T]:
        count = min(self.max_batch_size, len(bin_.items))
        batch = [bin_.items.popleft().item for _ in range(count)]
        self._queued -= count
        return batch


class AsyncBatcher(Generic[T]):
    """Runs a :class:`BatchQueue` on the current event loop.

    ``dispatch(batch)`` runs as its own task per batch, so a slow or failing dispatch never holds
    up or kills the others; its exceptions are logged (the callback owns per-request error
    reporting, e.g. failing each request's future).
    """

    def __init__(
        self,
        dispatch: DispatchFn[T],
        max_batch_size: int,
        batch_timeout_s: float,
        length_bins: Sequence[int] = (),
        clock: Clock = time.monotonic,
        at_once_when_idle: bool = False,
    ) -> None:
        self._dispatch = dispatch
        self.at_once_when_idle = at_once_when_idle
        self._queue: BatchQueue[T] = BatchQueue(max_batch_size, batch_timeout_s, length_bins, clock)
        self._clock = clock
        self._inflight: set[asyncio.Task[None]] = set()
        self._timer: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._closed = False
        self.dispatch_errors = 0

    @classmethod
    def from_config(
        cls, dispatch: DispatchFn[T], config: BatchingConfig, clock: Clock = time.monotonic
    ) -> AsyncBatcher[T]:
        timeout_s = config.batch_timeout_ms / 1000.0
        return cls(dispatch, config.max_batch_size, timeout_s, config.length_bins, clock, config.at_once_when_idle)

    @property
    def queued(self) -> int:
        """Requests waiting for their batch to close (not yet dispatched)."""
        return self._queue.queued

    @property
    def inflight_batches(self) -> int:
        return len(self._inflight)

    async def submit(self, item: T, cost: int) -> None:
        """Queue one request; returns once it is queued (or already dispatched)."""
        if self._closed:
            raise RuntimeError("batcher is closed")
        self._queue.put(item, cost)
        if self.at_once_when_idle and not self._inflight:
            # Nothing in flight to wait behind: waiting would only add latency (at low load every
            # request would pay the timeout); requests that arrive while this one runs batch.
            for batch in self._queue.drain():
                self._spawn(batch)
            return
        self._dispatch_ready()
        if self._queue.queued:
            self._ensure_timer().set()

    async def close(self) -> None:
        """Stop accepting requests, dispatch everything queued and wait for in-flight dispatches."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            await asyncio.gather(self._timer, return_exceptions=True)
        for batch in self._queue.drain():
            self._spawn(batch)
        await asyncio.gather(*self._inflight, return_exceptions=True)

    def _dispatch_ready(self) -> None:
        for batch in self._queue.pop_ready(self._clock()):
            self._spawn(batch)

    def _spawn(self, batch: list[T]) -> None:
        # A batch serves many requests, so it runs in an empty context, not in a copy of the
        # context of whichever request closed it (or started the timer): frameworks keep
        # per-request state in context variables. Ray Serve does: a replica call inherits the
        # request id from it, its request router indexes calls pending assignment by that id,
        # and of two batches sent under one id the second was never assigned (its requests hung);
        # a client disconnect of that one request would also cancel the whole batch's call.
        task = asyncio.create_task(self._run_dispatch(batch), context=contextvars.Context())
        self._inflight.add(task)
        task.add_done_callback(self._on_dispatch_done)

    async def _run_dispatch(self, batch: list[T]) -> None:
        # Called inside the task so that even a dispatch that raises before its first await
        # fails only its own task, never submit() or the timer loop.
        await self._dispatch(batch)

    def _on_dispatch_done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if task.cancelled():
            return
        err = task.exception()
        if err is not None:
            self.dispatch_errors += 1
            logger.error("batch dispatch failed: %s", err, exc_info=err)

    def _ensure_timer(self) -> asyncio.Event:
        # Created lazily: the event and the task need the running loop.
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        if self._timer is None or self._timer.done():
            self._timer = asyncio.create_task(self._run_timer(self._wakeup), context=contextvars.Context())
        return self._wakeup

    async def _run_timer(self, wakeup: asyncio.Event) -> None:
        """Sleeps until the earliest batch deadline (or a new submit) and dispatches what is ready."""
        while not self._closed:
            wakeup.clear()
            deadline = self._queue.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self._clock())
            try:
                await asyncio.wait_for(wakeup.wait(), timeout)
            except TimeoutError:
                pass
            self._dispatch_ready()
