"""Adaptive coalescing of streamed chunks (pure asyncio).

Every streamed item costs a fixed amount on each hop (serialization, a Ray object, an ASGI
message). When the consumer keeps up, each item goes out alone, at once: nothing waits on a
timer, so latency at low load is untouched. When the consumer falls behind, the items that piled
up meanwhile go out merged into one. Under load this divides the per-token overhead by the number
of tokens merged instead of letting a queue grow.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

T = TypeVar("T")

_END = object()


async def drained(source: AsyncIterator[T]) -> AsyncIterator[list[T]]:
    """Lists of what ``source`` yielded: one item when the consumer keeps up, everything that
    queued meanwhile when it lags. Exceptions in ``source`` are raised here after the items
    before them; closing this generator cancels the source."""
    queue: asyncio.Queue[object] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for item in source:
                queue.put_nowait(item)
        except BaseException as err:  # handed to the consumer, raised in its context
            queue.put_nowait(err)
        finally:
            queue.put_nowait(_END)

    task = asyncio.create_task(pump())
    try:
        while True:
            pending = [await queue.get()]
            while not queue.empty():
                pending.append(queue.get_nowait())
            failure = next((p for p in pending if isinstance(p, BaseException)), None)
            items = [p for p in pending if p is not _END and not isinstance(p, BaseException)]
            if items:
                yield items  # type: ignore[misc]
            if failure is not None:
                raise failure
            if pending[-1] is _END:
                return
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def coalesced(source: AsyncIterator[T], merge: Callable[[list[T]], list[T]]) -> AsyncIterator[T]:
    """Yield what ``source`` yields, passing items that queued together through ``merge``."""
    async for items in drained(source):
        for item in merge(items) if len(items) > 1 else items:
            yield item
