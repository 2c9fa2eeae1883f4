"""The replica's health check catches a hung engine, not only a dead one (FakeEngine, milliseconds)."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.config import ModelConfig
from serve_app.engine.fake import FakeEngine
from serve_app.engine.types import EngineDeadError, GenerationRequest, SamplingOptions
from tests.unit.conftest import make_replica_async

STALL_S = 0.3  # generous: these run on a loaded 2-core CI machine


def model() -> ModelConfig:
    return ModelConfig(id="m", engine_stall_timeout_s=STALL_S)


def request() -> GenerationRequest:
    return GenerationRequest("r1", "m", SamplingOptions(max_tokens=4), prompt="hello there")


async def test_a_healthy_idle_engine_passes() -> None:
    replica = await make_replica_async(model(), FakeEngine())
    await replica.check_health()


async def test_an_idle_engine_that_cannot_make_a_token_fails() -> None:
    replica = await make_replica_async(model(), FakeEngine(token_delay_s=10))  # every step hangs
    with pytest.raises(EngineDeadError, match="no token"):
        await replica.check_health()


async def test_requests_in_flight_without_progress_fail_the_check() -> None:
    engine = FakeEngine(token_delay_s=10)
    replica = await make_replica_async(model(), engine)
    stream = replica.generate(request())
    pending = asyncio.create_task(anext(stream))
    await asyncio.sleep(0.01)
    await replica.check_health()  # in flight, but not yet silent for the stall timeout
    await asyncio.sleep(2 * STALL_S)
    with pytest.raises(EngineDeadError, match="no progress"):
        await replica.check_health()
    assert engine.aborted == ["r1"], "what waits on a hung engine is aborted, not left hanging"
    (refused,) = [c async for c in replica.generate(request())]
    assert refused.error is not None and refused.error.status == 503
    pending.cancel()
    await asyncio.gather(pending, return_exceptions=True)
    engine.token_delay_s = 0.0  # the engine recovers: the next check passes and work is taken again
    await replica.check_health()
    answer = [c async for c in replica.generate(request())]
    assert answer and all(c.error is None for c in answer) and answer[-1].finish_reason == "length"


async def test_steady_progress_passes_and_a_dead_engine_fails() -> None:
    engine = FakeEngine(token_delay_s=STALL_S / 10)
    replica = await make_replica_async(model(), engine)
    chunks = 0
    async for _ in replica.generate(request()):
        chunks += 1
        await replica.check_health()
    assert chunks > 0
    engine.dead = True
    with pytest.raises(EngineDeadError):
        await replica.check_health()


async def test_a_replica_whose_engine_failed_stops_without_draining() -> None:
    replica = await make_replica_async(model(), FakeEngine(token_delay_s=10))
    replica.drain_timeout_s = 30.0
    pending = asyncio.create_task(anext(replica.generate(request())))
    await asyncio.sleep(2 * STALL_S)
    with pytest.raises(EngineDeadError):
        await replica.check_health()
    await asyncio.wait_for(replica.__del__(), timeout=1.0)  # not the 30 s drain: nothing will finish
    pending.cancel()
    await asyncio.gather(pending, return_exceptions=True)
