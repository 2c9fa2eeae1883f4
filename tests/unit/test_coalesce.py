from __future__ import annotations

import asyncio

import pytest

from serve_app.core.coalesce import coalesced, drained
from serve_app.engine.types import GenerationChunk, RequestError, merge_chunks


async def ticks(n: int, delay: float = 0.0):
    for i in range(n):
        await asyncio.sleep(delay)
        yield i


async def test_fast_consumer_gets_items_one_by_one() -> None:
    groups = [g async for g in drained(ticks(5, delay=0.005))]
    assert groups == [[0], [1], [2], [3], [4]]


async def test_slow_consumer_gets_what_queued_meanwhile() -> None:
    groups = []
    async for group in drained(ticks(20, delay=0.001)):
        groups.append(group)
        await asyncio.sleep(0.02)
    assert [x for g in groups for x in g] == list(range(20))
    assert len(groups) < 10


async def test_errors_surface_after_earlier_items() -> None:
    async def failing():
        yield 1
        raise ValueError("boom")

    seen = []
    with pytest.raises(ValueError, match="boom"):
        async for item in coalesced(failing(), lambda xs: xs):
            seen.append(item)
    assert seen == [1]


def test_merge_chunks_joins_per_request_and_keeps_errors() -> None:
    chunks = [
        GenerationChunk(text="a", completion_tokens=1, index=0),
        GenerationChunk(text="x", completion_tokens=1, index=1),
        GenerationChunk(text="b", completion_tokens=2, index=0, finish_reason="stop"),
        GenerationChunk(index=1, error=RequestError(503, "lost")),
    ]
    merged = merge_chunks(chunks)
    assert [(c.index, c.text, c.completion_tokens, c.finish_reason) for c in merged[:2]] == [
        (0, "ab", 2, "stop"),
        (1, "x", 1, None),
    ]
    assert merged[2].error is not None and merged[2].index == 1
