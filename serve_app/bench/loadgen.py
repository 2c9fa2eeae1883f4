"""The load generator: schedules requests (concurrency cap and/or Poisson arrivals) and collects records.

Scheduling follows ``vllm bench serve``: with a request count and a rate, exponential gaps are drawn
and rescaled so that the last arrival falls at ``count / rate`` seconds; a concurrency cap makes
arrivals wait for a free slot (that wait is ``queue_s``, outside every latency). The run's duration
is measured from the first dispatch until the last request completes.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import aiohttp
from tqdm import tqdm

from serve_app.bench.endpoints import Clock, TokenCounter, send_request
from serve_app.bench.records import Prompt, RequestRecord
from serve_app.bench.settings import LoadPlan, Target
from serve_app.errors import ServeAppError


class BenchError(ServeAppError, RuntimeError):
    """The benchmark cannot run (e.g. the warm-up request failed)."""


@dataclass
class RunResult:
    plan: LoadPlan
    records: list[RequestRecord]
    duration_s: float


def poisson_offsets(rate: float, count: int, rng: random.Random) -> list[float]:
    """Arrival times (seconds from start) of ``count`` requests, rescaled to end at ``count / rate``
    as vLLM does, so that runs with different seeds offer the same mean rate."""
    offsets = list(itertools.accumulate(rng.expovariate(rate) for _ in range(count)))
    scale = (count / rate) / offsets[-1]
    return [t * scale for t in offsets]


def arrivals(plan: LoadPlan, rng: random.Random) -> Iterator[float]:
    """Offsets of successive arrivals; unbounded in duration mode (the caller stops at the deadline)."""
    if plan.rate is None:
        yield from itertools.repeat(0.0, plan.num_requests) if plan.num_requests else itertools.repeat(0.0)
    elif plan.num_requests is not None:
        yield from poisson_offsets(plan.rate, plan.num_requests, rng)
    else:
        yield from itertools.accumulate(rng.expovariate(plan.rate) for _ in itertools.count())


class _Run:
    """State of one timed run; ``dispatch`` issues requests, each task fills one record."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        target: Target,
        plan: LoadPlan,
        prompts: Sequence[Prompt],
        count_tokens: TokenCounter | None,
        clock: Clock,
        bar: tqdm,
    ) -> None:
        self.session, self.target, self.plan, self.prompts = session, target, plan, prompts
        self.count_tokens, self.clock, self.bar = count_tokens, clock, bar
        self.slots = asyncio.Semaphore(plan.concurrency) if plan.concurrency else None
        self.origin = clock()

    def _past_deadline(self, at: float) -> bool:
        return self.plan.duration_s is not None and at - self.origin >= self.plan.duration_s

    async def dispatch(self) -> list[RequestRecord]:
        tasks: list[asyncio.Task[RequestRecord]] = []
        for index, offset in enumerate(arrivals(self.plan, random.Random(self.plan.seed))):
            arrival = self.origin + offset
            if self._past_deadline(arrival):
                break
            if (delay := arrival - self.clock()) > 0:
                await asyncio.sleep(delay)
            if self.slots is not None:
                await self.slots.acquire()
            if self._past_deadline(self.clock()):
                self._release()
                break
            prompt = self.prompts[index % len(self.prompts)]
            tasks.append(asyncio.create_task(self._one(index, prompt, arrival)))
        return list(await asyncio.gather(*tasks))

    def _release(self) -> None:
        if self.slots is not None:
            self.slots.release()

    async def _one(self, index: int, prompt: Prompt, arrival: float) -> RequestRecord:
        record = RequestRecord(index=index, prompt_tokens=prompt.prompt_tokens, max_tokens=prompt.max_tokens)
        begin = self.clock()
        record.start_s, record.queue_s = begin - self.origin, max(0.0, begin - arrival)
        try:
            return await send_request(self.session, self.target, record, prompt, self.count_tokens, self.clock)
        finally:
            self._release()
            self.bar.update(1)


async def warm_up(
    session: aiohttp.ClientSession, target: Target, prompt: Prompt, count: int, count_tokens: TokenCounter | None
) -> None:
    """Untimed requests before the run (also vLLM's "initial test run"): a failure stops the benchmark."""
    for index in range(count):
        record = RequestRecord(index=-1 - index, prompt_tokens=prompt.prompt_tokens, max_tokens=prompt.max_tokens)
        await send_request(session, target, record, prompt, count_tokens)
        if not record.success:
            raise BenchError(f"warm-up request failed ({record.error_kind}): {record.error}")


async def run_load(
    target: Target,
    plan: LoadPlan,
    prompts: Sequence[Prompt],
    count_tokens: TokenCounter | None = None,
    progress: bool = True,
    clock: Clock = time.perf_counter,
) -> RunResult:
    """Run one load level against ``target`` and return its records and wall time."""
    if not prompts:
        raise BenchError("no prompts to send")
    # The plan caps concurrency; the connection pool must not add a hidden cap of its own.
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=target.timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await warm_up(session, target, prompts[0], plan.warmup_requests, count_tokens)
        with tqdm(total=plan.num_requests, desc=plan.label, unit="req", disable=not progress) as bar:
            run = _Run(session, target, plan, prompts, count_tokens, clock, bar)
            records = await run.dispatch()
            duration = clock() - run.origin
    return RunResult(plan=plan, records=records, duration_s=duration)
