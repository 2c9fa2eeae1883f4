from __future__ import annotations

import asyncio
import contextvars

import pytest

from serve_app.config import BatchingConfig
from serve_app.core.batching import AsyncBatcher, BatchQueue
from tests.unit.virtual_time import advance, loop_clock


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_queue(
    max_batch_size: int = 4, timeout_s: float = 1.0, bins: tuple[int, ...] = ()
) -> tuple[BatchQueue, FakeClock]:
    clock = FakeClock()
    return BatchQueue(max_batch_size, timeout_s, bins, clock), clock


def test_batch_closes_when_full() -> None:
    queue, clock = make_queue(max_batch_size=3)
    for item in "abcde":
        queue.put(item, cost=10)
    assert queue.pop_ready(clock.now) == [["a", "b", "c"]]
    assert queue.queued == 2
    assert queue.pop_ready(clock.now) == []


def test_batch_closes_after_timeout_since_first_request() -> None:
    queue, clock = make_queue(max_batch_size=10, timeout_s=1.0)
    queue.put("a", 10)
    clock.now = 0.5
    queue.put("b", 10)
    assert queue.next_deadline() == pytest.approx(1.0)
    assert queue.pop_ready(0.99) == []
    assert queue.pop_ready(1.0) == [["a", "b"]]
    assert queue.next_deadline() is None
    assert queue.queued == 0


def test_leftover_requests_keep_their_own_arrival_clock() -> None:
    queue, clock = make_queue(max_batch_size=2, timeout_s=1.0)
    for t, item in ((0.0, "a"), (0.1, "b"), (0.2, "c")):
        clock.now = t
        queue.put(item, 10)
    assert queue.pop_ready(0.2) == [["a", "b"]]
    # "c" opened the next batch at 0.2, so it waits until 1.2, not 1.0.
    assert queue.next_deadline() == pytest.approx(1.2)
    assert queue.pop_ready(1.1) == []
    assert queue.pop_ready(1.2) == [["c"]]


def test_full_bin_reports_a_deadline_in_the_past() -> None:
    queue, clock = make_queue(max_batch_size=2, timeout_s=5.0)
    clock.now = 3.0
    queue.put("a", 1)
    queue.put("b", 1)
    deadline = queue.next_deadline()
    assert deadline is not None and deadline <= clock.now


def test_length_bins_group_requests_of_similar_cost() -> None:
    queue, _ = make_queue(max_batch_size=2, bins=(100, 1000))
    assert [queue.bin_index(c) for c in (0, 50, 100, 101, 1000, 1001, 50_000)] == [0, 0, 0, 1, 1, 2, 2]
    queue.put("short-1", 40)
    queue.put("long-1", 3000)
    queue.put("mid-1", 500)
    queue.put("short-2", 100)
    assert queue.pop_ready(0.0) == [["short-1", "short-2"]]
    assert queue.queued == 2
    assert sorted(queue.pop_ready(1.0)) == [["long-1"], ["mid-1"]]


def test_without_bins_costs_mix() -> None:
    queue, _ = make_queue(max_batch_size=2)
    queue.put("short", 1)
    queue.put("long", 10_000)
    assert queue.pop_ready(0.0) == [["short", "long"]]


@pytest.mark.parametrize(("size", "timeout"), [(1, 1.0), (8, 0.0)])
def test_size_one_or_zero_timeout_is_immediate(size: int, timeout: float) -> None:
    queue, clock = make_queue(max_batch_size=size, timeout_s=timeout)
    assert queue.immediate
    queue.put("a", 1)
    assert queue.pop_ready(clock.now) == [["a"]]


def test_bad_cost_is_refused_without_touching_the_queue() -> None:
    queue, clock = make_queue(max_batch_size=2)
    queue.put("good", 1)
    with pytest.raises(ValueError, match="cost"):
        queue.put("bad", -1)
    queue.put("good-2", 1)
    assert queue.pop_ready(clock.now) == [["good", "good-2"]]


def test_drain_returns_everything_in_batches() -> None:
    queue, _ = make_queue(max_batch_size=2, timeout_s=100.0, bins=(10,))
    for i in range(3):
        queue.put(f"s{i}", 5)
    queue.put("l0", 50)
    assert queue.drain() == [["s0", "s1"], ["s2"], ["l0"]]
    assert queue.queued == 0


def test_invalid_bins_are_rejected() -> None:
    with pytest.raises(ValueError):
        BatchQueue(2, 1.0, (100, 50))


def test_from_config_uses_milliseconds() -> None:
    clock = FakeClock()
    queue = BatchQueue.from_config(BatchingConfig(max_batch_size=4, batch_timeout_ms=250, length_bins=[64]), clock)
    queue.put("a", 1)
    assert queue.next_deadline() == pytest.approx(0.25)
    assert queue.length_bins == (64,)


class Recorder:
    def __init__(self, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.fail_on = fail_on
        self.changed = asyncio.Event()

    async def __call__(self, batch: list[str]) -> None:
        if self.fail_on in batch:
            raise RuntimeError("replica exploded")
        await asyncio.sleep(0)
        self.batches.append(batch)
        self.changed.set()

    async def wait_for(self, count: int) -> None:
        while len(self.batches) < count:
            self.changed.clear()
            await self.changed.wait()


async def test_async_zero_timeout_dispatches_each_request_at_once() -> None:
    sink = Recorder()
    batcher: AsyncBatcher[str] = AsyncBatcher(sink, max_batch_size=8, batch_timeout_s=0.0, clock=loop_clock())
    await batcher.submit("a", 1)
    await batcher.submit("b", 1)
    assert batcher.queued == 0
    await batcher.close()
    assert sink.batches == [["a"], ["b"]]


async def test_async_at_once_when_idle_sends_a_lone_request_now_and_batches_under_load() -> None:
    release = asyncio.Event()
    batches: list[list[str]] = []

    async def slow_sink(batch: list[str]) -> None:  # a batch stays in flight until released
        batches.append(batch)
        await release.wait()

    batcher: AsyncBatcher[str] = AsyncBatcher(
        slow_sink, max_batch_size=8, batch_timeout_s=30.0, at_once_when_idle=True, clock=loop_clock()
    )
    await batcher.submit("alone", 1)
    await asyncio.sleep(0)
    assert batches == [["alone"]], "nothing in flight: no waiting for the 30 s timeout"
    await batcher.submit("b", 1)
    await batcher.submit("c", 1)
    await advance(0.01)
    assert batches == [["alone"]] and batcher.queued == 2, "with a batch in flight, requests wait and batch"
    release.set()
    await batcher.close()
    assert batches == [["alone"], ["b", "c"]]


async def test_async_full_batch_does_not_wait_for_timeout() -> None:
    sink = Recorder()
    batcher: AsyncBatcher[str] = AsyncBatcher(sink, max_batch_size=2, batch_timeout_s=30.0, clock=loop_clock())
    await batcher.submit("a", 1)
    await batcher.submit("b", 1)
    await asyncio.wait_for(sink.wait_for(1), timeout=1.0)
    assert sink.batches == [["a", "b"]]
    await batcher.close()


async def test_async_timeout_closes_a_partial_batch() -> None:
    sink = Recorder()
    batcher: AsyncBatcher[str] = AsyncBatcher(sink, max_batch_size=10, batch_timeout_s=0.02, clock=loop_clock())
    await batcher.submit("a", 1)
    await batcher.submit("b", 1)
    assert sink.batches == [] and batcher.queued == 2
    await asyncio.wait_for(sink.wait_for(1), timeout=1.0)
    assert sink.batches == [["a", "b"]]
    assert batcher.queued == 0
    await batcher.close()


async def test_async_failing_dispatch_does_not_affect_other_batches() -> None:
    sink = Recorder(fail_on="bad")
    batcher: AsyncBatcher[str] = AsyncBatcher(sink, max_batch_size=1, batch_timeout_s=0.0, clock=loop_clock())
    for item in ("a", "bad", "c"):
        await batcher.submit(item, 1)
    with pytest.raises(ValueError):
        await batcher.submit("negative-cost", -5)
    await batcher.submit("d", 1)
    await batcher.close()
    assert sink.batches == [["a"], ["c"], ["d"]]
    assert batcher.dispatch_errors == 1


async def test_async_close_flushes_pending_and_refuses_more() -> None:
    sink = Recorder()
    batcher: AsyncBatcher[str] = AsyncBatcher(
        sink, max_batch_size=10, batch_timeout_s=60.0, length_bins=[100], clock=loop_clock()
    )
    await batcher.submit("s1", 10)
    await batcher.submit("l1", 500)
    await batcher.submit("s2", 10)
    await batcher.close()
    assert sorted(sink.batches) == [["l1"], ["s1", "s2"]]
    with pytest.raises(RuntimeError, match="closed"):
        await batcher.submit("late", 1)


async def test_async_dispatch_runs_outside_every_submitters_context() -> None:
    """A batch serves many requests: it must not inherit the context (e.g. a framework's request
    id) of whichever request closed it or started its timer."""
    request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
    seen: list[str | None] = []

    async def dispatch(batch: list[str]) -> None:
        seen.append(request_id.get())

    batcher: AsyncBatcher[str] = AsyncBatcher(dispatch, max_batch_size=2, batch_timeout_s=0.01, clock=loop_clock())

    async def submit_as(item: str) -> None:
        request_id.set(item)
        await batcher.submit(item, 1)

    for items in (["a", "b"], ["c"]):  # closes on size, then on the timer
        await asyncio.gather(*(submit_as(i) for i in items))
    await advance(0.05)
    await batcher.close()
    assert seen == [None, None]
