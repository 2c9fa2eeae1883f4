"""Scale to zero (``autoscaling.min_replicas: 0``) as the router sees it: a request for a model with
no replica waits (admitted, bounded by the request deadline) until a replica has started, and
readiness does not probe such a model, which would start a replica for nothing. The cold-start
decision itself (a queued request with no replica starts one at once) is in test_autoscaling.py."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from pydantic import ValidationError

from serve_app.config import AppConfig, AutoscalingConfig, ModelConfig, RouterConfig
from serve_app.engine.fake import FakeEngine
from serve_app.observability import InMemoryMetricsBackend, ServeAppMetrics
from serve_app.router.client import LocalReplicaClient
from tests.unit.conftest import build_app, engine_for, make_replica_async
from tests.unit.virtual_time import advance

pytestmark = pytest.mark.usefixtures("stop_replicas")

TO_ZERO = AutoscalingConfig(min_replicas=0, max_replicas=2)


class ColdStartClient(LocalReplicaClient):
    """Replica calls wait until ``started`` is set, as Ray Serve's handle queue holds them while a
    deployment scaled to zero starts its first replica."""

    def __init__(self, replicas: dict) -> None:
        super().__init__(replicas)
        self.started = asyncio.Event()
        self.probes = 0
        self.calls: list[str] = []

    async def stream(self, model, requests):
        self.calls += [r.path for r in requests]
        await self.started.wait()
        async for events in super().stream(model, requests):
            yield events

    async def probe(self, model, prompt):
        self.probes += 1
        await self.started.wait()
        return await super().probe(model, prompt)


async def make_app(router: RouterConfig | None = None, models: list[ModelConfig] | None = None) -> tuple:
    models = models or [ModelConfig(id="cold", source="/x", autoscaling=TO_ZERO)]
    config = AppConfig(models=models, router=router or RouterConfig())
    engine = FakeEngine(model_id=models[0].id)
    client = ColdStartClient({m.id: await make_replica_async(m, engine_for(m, engine)) for m in models})
    store = InMemoryMetricsBackend()
    app = build_app(config, client, ServeAppMetrics(store), replica_name="router-1")
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    return http, client, store


def completion(model: str = "cold") -> dict:
    return {"model": model, "prompt": "hello", "max_tokens": 4}


async def test_a_request_is_held_until_the_first_replica_starts() -> None:
    http, client, store = await make_app()
    async with http:
        request = asyncio.create_task(http.post("/v1/completions", json=completion()))
        await advance(0.1)
        assert not request.done(), "the request must wait for a replica, not fail"
        assert store.gauge("serve_app_router_queue_depth", replica="router-1") == 1  # held under admission
        client.started.set()
        resp = await asyncio.wait_for(request, timeout=5)
    assert resp.status_code == 200 and resp.json()["choices"][0]["text"]
    assert store.gauge("serve_app_router_queue_depth", replica="router-1") == 0


async def test_a_replica_that_starts_too_late_answers_504_and_frees_the_queue() -> None:
    http, _, store = await make_app(router=RouterConfig(request_timeout_s=0.1))
    async with http:
        resp = await asyncio.wait_for(http.post("/v1/completions", json=completion()), timeout=5)
    assert resp.status_code == 504 and resp.json()["error"]["code"] == "timeout"
    assert store.gauge("serve_app_router_queue_depth", replica="router-1") == 0


async def test_holding_is_bounded_by_admission() -> None:
    http, client, _ = await make_app(router=RouterConfig(max_queued_requests=2, retry_after_s=7))
    async with http:
        held = [asyncio.create_task(http.post("/v1/completions", json=completion())) for _ in range(2)]
        await advance(0.1)
        overflow = await http.post("/v1/completions", json=completion())
        client.started.set()
        answers = await asyncio.wait_for(asyncio.gather(*held), timeout=5)
    assert overflow.status_code == 429 and overflow.headers["Retry-After"] == "7"
    assert [r.status_code for r in answers] == [200, 200]


async def test_readiness_does_not_wake_a_model_scaled_to_zero() -> None:
    models = [ModelConfig(id="cold", source="/x", autoscaling=TO_ZERO), ModelConfig(id="warm", source="/y")]
    http, client, _ = await make_app(models=models)
    client.started.set()  # the warm model's replica answers its probe
    async with http:
        resp = await http.get("/ready")
    assert resp.status_code == 200 and resp.json()["models"] == {"cold": "ok", "warm": "ok"}
    assert client.probes == 1, "only the model with min_replicas >= 1 is probed"


async def test_models_lists_a_model_scaled_to_zero_without_waking_it() -> None:
    cold = ModelConfig(id="cold", source="/x", autoscaling=TO_ZERO, openai_server={"served_model_aliases": ["c"]})
    http, client, _ = await make_app(models=[cold, ModelConfig(id="warm", source="/y")])
    client.started.set()
    async with http:
        resp = await http.get("/v1/models")
    assert [card["id"] for card in resp.json()["data"]] == ["cold", "c", "warm"]
    assert client.calls == ["/v1/models"], "only the warm model's server is asked for its cards"


def test_scale_to_zero_bounds() -> None:
    with pytest.raises(ValidationError, match="initial_replicas"):
        AutoscalingConfig(min_replicas=0, max_replicas=1, initial_replicas=2)
    with pytest.raises(ValidationError):
        AutoscalingConfig(min_replicas=0, max_replicas=0)  # a model that could never serve
