"""The unit tier's fake clock for asyncio (tests/unit/virtual_time.py)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from tests.unit.virtual_time import VirtualTimeLoop, advance, loop_clock


async def test_async_unit_tests_run_on_the_virtual_time_loop() -> None:
    assert isinstance(asyncio.get_running_loop(), VirtualTimeLoop)


@pytest.mark.real_time
async def test_a_real_time_test_runs_on_asyncios_own_loop() -> None:
    assert not isinstance(asyncio.get_running_loop(), VirtualTimeLoop)


async def test_timers_fire_in_order_at_once_and_timeouts_expire_on_the_loops_clock() -> None:
    clock, fired = loop_clock(), []
    started, real_started = clock(), time.monotonic()
    for delay in (30.0, 10.0, 20.0):
        asyncio.get_running_loop().call_later(delay, fired.append, delay)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.Event().wait(), timeout=3600)
    await advance(0)
    assert fired == [10.0, 20.0, 30.0] and clock() - started == pytest.approx(3600)
    assert time.monotonic() - real_started < 1, "an hour of loop time, without waiting for it"


async def test_io_that_is_ready_is_read_before_a_pending_timeout_expires() -> None:
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    theirs.sendall(b"ping\n")  # readable at once: a local socket pair
    try:
        assert await asyncio.wait_for(reader.readline(), timeout=60) == b"ping\n"
    finally:
        writer.close()
        await writer.wait_closed()
        theirs.close()


async def test_a_timeout_waits_in_real_time_for_work_in_a_thread() -> None:
    clock, real_started = loop_clock(), time.monotonic()
    started = clock()
    done = await asyncio.wait_for(asyncio.to_thread(time.sleep, 0.05), timeout=1.0)
    assert done is None and time.monotonic() - real_started >= 0.05
    assert clock() - started < 1.0, "the timeout did not expire while the thread ran"
