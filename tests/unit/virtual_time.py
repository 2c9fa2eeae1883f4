"""A fake clock for asyncio: an event loop whose time moves only when it has nothing else to do.

``loop.time()`` is what ``asyncio.sleep``, ``wait_for``, ``asyncio.timeout`` and ``call_later``
read, so on this loop every timer fires in order and at once: a test that waits out a 0.1 s stall
or a batch timer takes microseconds and cannot race the machine's load. When no callback is ready
and a timer is due in ``t`` seconds, the loop polls its file descriptors without blocking and, if
none is ready, moves its clock ``t`` seconds on. With no timer due it blocks on I/O for real.

Code under test that reads time itself takes a clock (a callable returning monotonic seconds); a
test on this loop passes ``loop.time``. While work runs in a worker thread (``run_in_executor``,
``asyncio.to_thread``) the clock follows real time instead, so a timeout cannot expire before the
thread had its chance to finish. Tests whose I/O the loop cannot see (a real TCP server, OS locks
polled from threads) run on asyncio's own loop: ``@pytest.mark.real_time``.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar, TypeVarTuple, Unpack

T = TypeVar("T")
Ts = TypeVarTuple("Ts")
START_S = 1_000.0  # not 0: code may treat a zero timestamp as "never"


class _FastForwardSelector(selectors.DefaultSelector):
    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        if self._loop.threads_running:  # real time: wait for the thread's wake-up (or the timer)
            ready: list[tuple[Any, int]] = super().select(timeout)
        else:
            ready = super().select(0)
            if ready or timeout is None:
                return ready or super().select(None)
        if not ready and timeout is not None:
            self._loop.advance(timeout)
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._now = START_S
        self.threads_running = 0
        super().__init__(_FastForwardSelector(self))

    def run_in_executor(
        self, executor: Executor | None, func: Callable[[Unpack[Ts]], T], *args: *Ts
    ) -> asyncio.Future[T]:
        future = super().run_in_executor(executor, func, *args)
        self.threads_running += 1
        future.add_done_callback(self._thread_done)
        return future

    def _thread_done(self, _future: asyncio.Future[Any]) -> None:
        self.threads_running -= 1

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += max(0.0, seconds)


async def advance(seconds: float) -> None:
    """Let ``seconds`` of the loop's time pass (timers due meanwhile fire in order); instant."""
    assert isinstance(asyncio.get_running_loop(), VirtualTimeLoop), "advance() needs the virtual-time loop"
    await asyncio.sleep(seconds)


def loop_clock() -> Callable[[], float]:
    """The running loop's clock, for code under test that takes a ``clock``."""
    return asyncio.get_running_loop().time
