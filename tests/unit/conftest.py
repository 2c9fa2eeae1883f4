from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serve_app.config import AppConfig, ModelConfig
from serve_app.engine.fake import FakeEngine
from serve_app.observability.recorder import ServeAppMetrics
from serve_app.replica.deployment import LLMReplica
from serve_app.replica.parts import replica_parts
from serve_app.router.adapter_catalog import Catalog
from serve_app.router.client import LocalReplicaClient, ReplicaClient
from serve_app.router.cluster_quota import LocalBank
from serve_app.router.flow_gate import build_flow_gate
from serve_app.router.ingress import build_fastapi
from serve_app.router.models import build_readiness, build_relay
from tests.unit.virtual_time import VirtualTimeLoop

# The unit tier imports none of these (tests/unit/test_unit_tier.py checks every module's imports;
# the fixture below catches one made inside a test). Tests that need them live in tests/integration.
HEAVY_MODULES = ("ray", "torch", "vllm")


@pytest.fixture(autouse=True)
def _imports_nothing_heavy() -> Iterator[None]:
    before = {name for name in HEAVY_MODULES if name in sys.modules}
    yield
    loaded = [name for name in HEAVY_MODULES if name in sys.modules and name not in before]
    assert not loaded, f"this unit test imported {loaded}; tests that need them belong in tests/integration"


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    """Async unit tests run on the virtual-time loop (tests/unit/virtual_time.py): their timers fire
    at once and in order. A test marked ``real_time`` runs on asyncio's own loop."""
    if item.get_closest_marker("real_time") is not None:
        return {"real_time": asyncio.new_event_loop}
    return {"virtual_time": VirtualTimeLoop}


UNIT_DIR = Path(__file__).resolve().parent

# Warnings are errors in the unit tier. An exception names the warning's class, a regex of its
# message and the module that warns, with the reason it cannot be fixed here (a third-party
# deprecation, say); a warning from our own code is fixed instead. test_unit_tier.py checks the form.
# Every tier makes deprecations errors (pyproject.toml, each exception named there); this tier makes
# every warning one (a ResourceWarning too).
WARNINGS_ALLOWED: tuple[tuple[str, str], ...] = ()  # (filter "ignore:MESSAGE:CLASS:MODULE", why)


def unit_warning_filters() -> list[str]:
    """pytest filterwarnings entries, in order: "error", then each named exception (the last match wins)."""
    return ["error", *(entry for entry, _why in WARNINGS_ALLOWED)]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The hook sees the whole session's items: only the unit tier's get the mark.
    for item in items:
        if UNIT_DIR in item.path.parents:
            item.add_marker(pytest.mark.filterwarnings(*unit_warning_filters()))


# Replicas made by make_replica_async in a test's own event loop, for stop_replicas to shut down.
_started: list[LLMReplica] = []


async def _new_replica(
    model: ModelConfig, engine: FakeEngine, clock: Callable[[], float] = time.monotonic
) -> LLMReplica:
    replica = LLMReplica.__new__(LLMReplica)
    await LLMReplica.__init__(replica, replica_parts(model), None, engine_factory=lambda _m, _p: engine, clock=clock)  # type: ignore[misc]
    return replica


async def make_replica_async(model: ModelConfig, engine: FakeEngine) -> LLMReplica:
    """A replica in the running loop, on its clock; the ``stop_replicas`` fixture shuts it down after the test."""
    _started.append(replica := await _new_replica(model, engine, asyncio.get_running_loop().time))
    return replica


def make_replica(model: ModelConfig, engine: FakeEngine) -> LLMReplica:
    """A replica for a TestClient's loop; whoever makes one shuts it down (``app_client`` does)."""
    return asyncio.run(_new_replica(model, engine))


@pytest.fixture
async def stop_replicas() -> AsyncIterator[None]:
    """Shut down, after the test, the replicas it made with make_replica_async (briefly drained):
    a replica left to garbage collection leaves its shutdown coroutine never awaited."""
    yield
    while _started:
        replica = _started.pop()
        replica.drain_timeout_s = min(replica.drain_timeout_s, 0.05)
        if (stopping := replica.__del__()) is not None:
            await stopping


def engine_for(model: ModelConfig, engine: FakeEngine) -> FakeEngine:
    """``engine`` for the model it serves; any other model gets a fake of its own (with the same
    settings), whose model card names that model as vLLM's would."""
    if model.id == engine.model_id:
        return engine
    return FakeEngine(engine.max_model_len, engine.token_delay_s, engine.fail_on, model_id=model.id)


def build_app(
    config: AppConfig,
    replica_client: ReplicaClient,
    metrics: ServeAppMetrics | None = None,
    replica_name: str = "local",
    adapter_catalog: Catalog | None = None,
) -> FastAPI:
    """The router's HTTP app as its deployment builds it, over ``replica_client``; in a running
    loop (an async test), on that loop's clock. Router replicas of one app share ``adapter_catalog``
    (a ``LocalCatalog`` instead of the Ray actor); None: one of its own."""
    relay = build_relay(
        config, replica_client, metrics or ServeAppMetrics.disabled(), replica_name, loop_clock_or_monotonic()
    )
    if config.flow_control is not None:  # the quota bank in this process instead of a Ray actor
        relay.flow = build_flow_gate(config, LocalBank(), relay.metrics, replica_name, relay.clock)
    return build_fastapi(config, relay, build_readiness(config, replica_client), adapter_catalog)


def loop_clock_or_monotonic() -> Callable[[], float]:
    """The running loop's clock (an async test's virtual time), else time.monotonic."""
    try:
        return asyncio.get_running_loop().time
    except RuntimeError:  # no loop yet: a TestClient's app, on its own (real-time) loop
        return time.monotonic


@contextmanager
def app_client(
    config: AppConfig, engine: FakeEngine, metrics: ServeAppMetrics | None = None, **client_options: Any
) -> Iterator[TestClient]:
    """Router + replica code + fake engines in-process, behind a TestClient."""
    replicas = {m.id: make_replica(m, engine_for(m, engine)) for m in config.models}
    with TestClient(build_app(config, LocalReplicaClient(replicas), metrics), **client_options) as test_client:
        yield test_client
    for replica in replicas.values():
        asyncio.run(replica.__del__())


def two_models() -> AppConfig:
    return AppConfig(
        models=[
            ModelConfig(id="fake", source="/nonexistent/fake", max_tokens_limit=32, default_max_tokens=8, max_n=4),
            ModelConfig(id="fake-embed", source="/nonexistent/embed", task="embed"),
        ]
    )


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine(max_model_len=64)


@pytest.fixture
def app_config() -> AppConfig:
    return two_models()


@pytest.fixture
def client(app_config: AppConfig, fake_engine: FakeEngine) -> Iterator[TestClient]:
    with app_client(app_config, fake_engine) as test_client:
        yield test_client
