from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from serve_app.config import AppConfig, ModelConfig
from serve_app.engine.fake import FakeEngine
from serve_app.replica.deployment import LLMReplica
from serve_app.router.client import LocalReplicaClient
from serve_app.router.ingress import build_fastapi
from serve_app.observability.recorder import ServeAppMetrics
from serve_app.router.readiness import Readiness
from serve_app.router.relay import Relay


async def make_replica_async(model: ModelConfig, engine: FakeEngine) -> LLMReplica:
    replica = LLMReplica.__new__(LLMReplica)
    await LLMReplica.__init__(replica, model, None, engine_factory=lambda _m, _p: engine)  # type: ignore[misc]
    return replica


def make_replica(model: ModelConfig, engine: FakeEngine) -> LLMReplica:
    return asyncio.run(make_replica_async(model, engine))


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine(max_model_len=64)


@pytest.fixture
def app_config() -> AppConfig:
    return AppConfig(
        models=[
            ModelConfig(id="fake", source="/nonexistent/fake", max_tokens_limit=32, default_max_tokens=8, max_n=4),
            ModelConfig(id="fake-embed", source="/nonexistent/embed", task="embed"),
        ]
    )


@pytest.fixture
def client(app_config: AppConfig, fake_engine: FakeEngine) -> Iterator[TestClient]:
    replicas = {m.id: make_replica(m, fake_engine) for m in app_config.models}
    replica_client = LocalReplicaClient(replicas)
    relay = Relay(app_config, replica_client, ServeAppMetrics.disabled())
    with TestClient(build_fastapi(app_config, relay, Readiness(app_config, replica_client))) as test_client:
        yield test_client
    for replica in replicas.values():
        asyncio.run(replica.__del__())
