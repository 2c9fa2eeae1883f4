"""Router batching of generation on the real stack: a batch's chunks come back as one Ray message
per engine step, greedy answers do not change, and a client leaving a batch has its engine
request aborted on the batch's replica (``CancelRequests``, routed there by the request router)
while the rest of the batch goes on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import RunningApp, local_config
from tests.integration.test_serving import MODEL, QUESTION, engine_busy, replica_engine_stats

pytestmark = pytest.mark.integration

BATCH = 8
LEAVERS = 4
ABORT_BUDGET_S = 2.0


@pytest.fixture(scope="module")
def app(serve_app_factory) -> Iterator[RunningApp]:
    # A batch closes only when full (the timeout is long), so the test's requests share one batch.
    batching = {"max_batch_size": BATCH, "batch_timeout_ms": 3000}
    yield serve_app_factory(local_config(max_model_len=512, batching=batching))


def test_a_batch_of_greedy_chats_all_answer_paris(app: RunningApp) -> None:
    body = {"model": MODEL, "messages": QUESTION, "temperature": 0, "max_tokens": 24}

    async def ask_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=app.base_url, timeout=180) as http:
            return await asyncio.gather(*(http.post("/v1/chat/completions", json=body) for _ in range(BATCH)))

    responses = asyncio.run(ask_all())
    assert [r.status_code for r in responses] == [200] * BATCH
    answers = {r.json()["choices"][0]["message"]["content"] for r in responses}
    assert answers == {"The capital of France is Paris."}


async def _leave_half_of_a_batch(app: RunningApp) -> tuple[float, dict, list[int]]:
    """Opens a batch of long streams, waits for every first token and drops LEAVERS of them.
    Returns the seconds until the replica held only the stayers' requests, its stats then, and
    how many events each stayer read after the others left."""
    body = {"model": MODEL, "prompt": "Count from one to a thousand:", "max_tokens": 400, "ignore_eos": True}
    first = [asyncio.Event() for _ in range(BATCH)]
    leave, stop = asyncio.Event(), asyncio.Event()
    read_after_leaving = [0] * BATCH

    async def stream(http: httpx.AsyncClient, i: int) -> None:
        async with http.stream("POST", "/v1/completions", json=body | {"stream": True}) as resp:
            assert resp.status_code == 200
            lines = resp.aiter_lines()  # held: a finalized line iterator would close the connection
            async for line in lines:
                if not line.startswith("data: "):
                    continue
                first[i].set()
                if i < LEAVERS or stop.is_set():
                    break
                read_after_leaving[i] += leave.is_set()
            await (leave if i < LEAVERS else stop).wait()  # leaving the block is a disconnect

    limits = httpx.Limits(max_connections=BATCH)
    async with httpx.AsyncClient(base_url=app.base_url, timeout=180, limits=limits) as http:
        tasks = [asyncio.create_task(stream(http, i)) for i in range(BATCH)]
        await asyncio.wait_for(asyncio.gather(*(ev.wait() for ev in first)), timeout=180)
        busy = await asyncio.to_thread(replica_engine_stats, app)
        assert busy["outstanding_requests"] == BATCH, busy  # 400 tokens each take long on CPU
        leave.set()
        await asyncio.gather(*tasks[:LEAVERS])
        left_at = time.monotonic()
        stats = busy
        while stats["outstanding_requests"] > BATCH - LEAVERS and time.monotonic() - left_at < 30:
            stats = await asyncio.to_thread(replica_engine_stats, app)
        took_s = time.monotonic() - left_at
        await asyncio.sleep(1)  # the stayers keep reading meanwhile
        stop.set()
        await asyncio.gather(*tasks[LEAVERS:])
        return took_s, stats, read_after_leaving[LEAVERS:]


def test_clients_leaving_a_batch_are_aborted_while_the_rest_go_on(app: RunningApp) -> None:
    took_s, stats, stayers_read = asyncio.run(_leave_half_of_a_batch(app))
    print(f"\n{LEAVERS} of a batch of {BATCH} left: their engine requests gone after {took_s:.2f} s ({stats})")
    assert stats["outstanding_requests"] == BATCH - LEAVERS, stats
    assert took_s <= ABORT_BUDGET_S
    assert all(n > 0 for n in stayers_read), f"the rest of the batch must go on streaming: {stayers_read}"
    deadline = time.monotonic() + 30  # the stayers have left too: nothing may keep running
    while engine_busy(stats := replica_engine_stats(app)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine_busy(stats) == 0, stats


async def _batch_seconds(app: RunningApp, max_tokens: list[int]) -> list[float]:
    """Each request's seconds from the batch's start to its last byte; all sent at once (one batch)."""
    started = time.monotonic()

    async def one(http: httpx.AsyncClient, tokens: int) -> float:
        body = {"model": MODEL, "prompt": "Count from one to a thousand:", "max_tokens": tokens, "ignore_eos": True}
        resp = await http.post("/v1/completions", json=body | {"temperature": 0})
        assert resp.status_code == 200, resp.text
        assert resp.json()["usage"]["completion_tokens"] == tokens
        return time.monotonic() - started

    limits = httpx.Limits(max_connections=len(max_tokens))
    async with httpx.AsyncClient(base_url=app.base_url, timeout=300, limits=limits) as http:
        return list(await asyncio.gather(*(one(http, t) for t in max_tokens)))


def test_short_requests_end_with_their_own_answer_not_their_batchs(app: RunningApp) -> None:
    """Seven 4-token requests in one batch with a 160-token one end about when a batch of eight
    4-token requests ends, while the long one runs on (on the old path they all ended with it)."""
    alone = max(asyncio.run(_batch_seconds(app, [4] * BATCH)))
    *short, long = asyncio.run(_batch_seconds(app, [4] * (BATCH - 1) + [160]))
    print(f"\nshort batch {alone:.2f} s; in a mixed batch the short ones {max(short):.2f} s, the long one {long:.2f} s")
    assert max(short) <= 2 * alone
    assert long > 2 * max(short), "the long request must still run when the short ones have ended"
