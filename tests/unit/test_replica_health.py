"""The replica's health check catches a hung engine, not only a dead one, and fails what waits on it;
shutdown drains in-flight requests (FakeEngine, milliseconds)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from serve_app.config import ModelConfig
from serve_app.engine.fake import FakeEngine
from serve_app.engine.types import EngineDeadError
from serve_app.replica.contract import Event, RelayRequest, ResponseBody, ResponseEnd
from tests.unit.conftest import make_replica_async
from tests.unit.virtual_time import advance

STALL_S = 0.1  # every advance() below is a small multiple of it (loop time: no real wait)


pytestmark = pytest.mark.usefixtures("stop_replicas")


def model() -> ModelConfig:
    return ModelConfig(id="m", engine_stall_timeout_s=STALL_S)


def request(stream: bool = True, rid: str = "r1") -> RelayRequest:
    body = {"model": "m", "prompt": "hello there", "max_tokens": 4, "stream": stream}
    return RelayRequest(rid, "/v1/completions", json.dumps(body).encode())


async def events_of(stream: AsyncIterator) -> list[Event]:
    return [event async for events in stream for event in events]


def end_of(events: list[Event]) -> ResponseEnd:
    (end,) = [e for e in events if isinstance(e, ResponseEnd)]
    return end


async def test_a_healthy_idle_engine_passes_its_liveness_probe_through_the_server() -> None:
    replica = await make_replica_async(model(), FakeEngine())
    status, body = await replica.call_json("/v1/completions", {"prompt": "Hi", "max_tokens": 1}, 1.0)
    assert status == 200 and body["usage"]["completion_tokens"] == 1
    await replica.check_health()


async def test_an_idle_engine_that_cannot_make_a_token_fails() -> None:
    engine = FakeEngine(token_delay_s=10)  # every step hangs
    replica = await make_replica_async(model(), engine)
    with pytest.raises(EngineDeadError, match="no token"):
        await replica.check_health()
    assert not engine.running and len(engine.aborted) == 1, "the probe's own request is aborted"


async def test_requests_in_flight_without_progress_fail_the_check_and_are_failed() -> None:
    engine = FakeEngine(token_delay_s=10)
    replica = await make_replica_async(model(), engine)
    answer = asyncio.create_task(events_of(replica.stream([request()])))
    await advance(0.01)
    await replica.check_health()  # in flight, but not yet silent for the stall timeout
    await advance(2 * STALL_S)
    with pytest.raises(EngineDeadError, match="no progress"):
        await replica.check_health()
    events = await asyncio.wait_for(answer, timeout=1.0)  # what waits on a hung engine ends, not hangs
    assert end_of(events).error is not None and not _bodies(events)
    assert len(engine.aborted) == 1 and not engine.running, "its engine request was aborted"
    refused = end_of(await events_of(replica.stream([request()])))
    assert refused.error is not None and refused.status == 503
    engine.token_delay_s = 0.0  # the engine recovers: the next check passes and work is taken again
    await replica.check_health()
    events = await events_of(replica.stream([request()]))
    assert end_of(events).error is None and end_of(events).usage.finish_reason == "length"


async def test_steady_progress_passes_and_a_dead_engine_fails() -> None:
    engine = FakeEngine(token_delay_s=STALL_S / 5)
    replica = await make_replica_async(model(), engine)
    messages = 0
    async for _ in replica.stream([request()]):
        messages += 1
        await replica.check_health()
    assert messages >= 4
    engine.dead = True
    with pytest.raises(EngineDeadError):
        await replica.check_health()


async def test_a_dead_engine_gets_503_not_500_before_any_health_check() -> None:
    engine = FakeEngine()
    replica = await make_replica_async(model(), engine)
    engine.dead = True
    for stream in (False, True):
        end = end_of(await events_of(replica.stream([request(stream=stream)])))
        assert (end.status, end.index) == (503, 0) and "being replaced" in (end.error or "")
    assert not engine.running


async def test_a_replica_whose_engine_failed_stops_without_draining() -> None:
    replica = await make_replica_async(model(), FakeEngine(token_delay_s=10))
    replica.drain_timeout_s = 30.0
    pending = asyncio.create_task(events_of(replica.stream([request(stream=False)])))
    await advance(2 * STALL_S)
    with pytest.raises(EngineDeadError):
        await replica.check_health()
    await asyncio.wait_for(replica.__del__(), timeout=1.0)  # not the 30 s drain: nothing will finish
    await asyncio.wait_for(pending, timeout=1.0)


async def test_shutdown_lets_requests_in_flight_finish_and_refuses_new_ones() -> None:
    engine = FakeEngine(token_delay_s=0.02)
    replica = await make_replica_async(model(), engine)
    replica.drain_timeout_s = 1.0
    running = asyncio.create_task(events_of(replica.stream([request()])))
    await advance(0.01)
    drained = asyncio.create_task(replica.__del__())
    await advance(0.01)
    refused = end_of(await events_of(replica.stream([request(rid="late")])))
    assert (refused.status, refused.error) == (503, "replica is shutting down")
    assert engine.started, "the engine stops only once the request in flight is done"
    await asyncio.wait_for(drained, timeout=1.0)
    assert not engine.started
    answered = await asyncio.wait_for(running, timeout=1.0)
    assert end_of(answered).error is None and len(_bodies(answered)) >= 4


async def test_the_drain_is_bounded() -> None:
    engine = FakeEngine(token_delay_s=10)
    replica = await make_replica_async(model(), engine)
    replica.drain_timeout_s = 0.05
    stream = replica.stream([request()])
    pending = asyncio.create_task(anext(stream))
    await advance(0.01)
    await asyncio.wait_for(replica.__del__(), timeout=1.0)
    assert not engine.started
    pending.cancel()
    await asyncio.gather(pending, return_exceptions=True)
    await stream.aclose()


def _bodies(events: list[Event]) -> list[bytes]:
    return [e.data for e in events if isinstance(e, ResponseBody)]
