"""Flow control on the in-process app (router + replica code + FakeEngine; the quota bank in
process): tenant keys, quota 429s, capacity 503s, classes, the usage endpoint, metrics."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import httpx
import pytest

from serve_app.config import AppConfig, ModelConfig
from serve_app.config_tenants import ClassQueueConfig, FlowControlConfig
from serve_app.core.flow_queue import OWN_RATE_SAMPLES
from serve_app.engine.fake import FakeEngine
from serve_app.observability import InMemoryMetricsBackend, ServeAppMetrics
from serve_app.router.client import LocalReplicaClient
from serve_app.router.cluster_quota import LocalBank
from serve_app.router.errors import OpenAIError
from serve_app.router.flow_gate import FlowGate, build_flow_gate
from tests.unit.conftest import app_client, build_app, loop_clock_or_monotonic, make_replica_async
from tests.unit.virtual_time import advance

KEYS = {"a": "sk-tenant-a-0123456789abcdef", "b": "sk-tenant-b-0123456789abcdef", "ops": "sk-admin-0123456789abcdef"}
CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5}


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def bearer(tenant: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}", **headers}


def flow_config(**flow: Any) -> AppConfig:
    tenants = [
        {"name": "a", "api_key_sha256": [digest(KEYS["a"])], "tokens_per_minute": 100, "priority": "batch"},
        {"name": "b", "api_key_sha256": [digest(KEYS["b"])], "tokens_per_minute": 10_000},
        {"name": "ops", "api_key_sha256": [digest(KEYS["ops"])], "admin": True},
    ]
    return AppConfig(
        models=[ModelConfig(id="fake", source="/nonexistent/fake", max_tokens_limit=32, default_max_tokens=8)],
        flow_control=FlowControlConfig.model_validate({"tenants": tenants, "sync_interval_s": 0.02} | flow),
    )


def test_quota_429_fast_with_retry_after_and_other_tenant_unaffected() -> None:
    backend = InMemoryMetricsBackend()
    with app_client(flow_config(), FakeEngine(max_model_len=64), ServeAppMetrics(backend)) as client:
        answers = [client.post("/v1/chat/completions", json=CHAT, headers=bearer("a")) for _ in range(30)]
        statuses = [r.status_code for r in answers]
        assert statuses[0] == 200 and 429 in statuses
        refused = answers[statuses.index(429)]
        error = refused.json()["error"]
        assert error["type"] == "rate_limit_error" and error["code"] == "quota_exceeded"
        assert int(refused.headers["Retry-After"]) >= 1
        started = time.perf_counter()
        assert client.post("/v1/chat/completions", json=CHAT, headers=bearer("a")).status_code == 429
        assert time.perf_counter() - started < 0.05
        assert all(
            client.post("/v1/chat/completions", json=CHAT, headers=bearer("b")).status_code == 200 for _ in range(5)
        )
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 401
    assert backend.counter("serve_app_tenant_requests", tenant="a", priority="batch", outcome="quota") >= 1
    assert backend.counter("serve_app_tenant_requests", tenant="b", priority="interactive", outcome="admitted") == 5
    assert backend.counter("serve_app_tenant_tokens", tenant="b", kind="completion") > 0


@pytest.mark.usefixtures("stop_replicas")
async def test_usage_endpoint_is_admin_only_and_counts_actual_tokens() -> None:
    config = flow_config()
    replicas = {"fake": await make_replica_async(config.models[0], FakeEngine(max_model_len=64))}
    app = build_app(config, LocalReplicaClient(replicas))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        answer = (await client.post("/v1/chat/completions", json=CHAT, headers=bearer("b"))).json()
        await advance(0.1)  # a few sync intervals, on the loop's clock
        assert (await client.get("/admin/usage", headers=bearer("b"))).status_code == 403
        usage = (await client.get("/admin/usage/b", headers=bearer("ops"))).json()["tenants"]["b"]
        assert usage["tokens_per_minute"] == {"used": sum(answer["usage"].values()), "limit": 10_000}
        assert usage["requests_per_minute"]["used"] == 1 and usage["keys"] == ["key-" + digest(KEYS["b"])[:12]]
        tenants = (await client.get("/admin/usage", headers=bearer("ops"))).json()["tenants"]
        assert set(tenants) == {"a", "b", "ops", "default"}
        assert (await client.get("/admin/usage/nobody", headers=bearer("ops"))).status_code == 404


def gate(**flow: Any) -> FlowGate:
    """A flow gate; in an async test, on its (virtual-time) loop's clock."""
    metrics = ServeAppMetrics(InMemoryMetricsBackend())
    return build_flow_gate(flow_config(**flow), LocalBank(), metrics, "r1", loop_clock_or_monotonic())


async def test_interactive_goes_first_and_batch_is_shed_when_full() -> None:
    flow = gate(max_in_flight=1, max_waiting=2)
    a, b = flow.tenants.caller(f"key-{digest(KEYS['a'])[:12]}", None), flow.tenants.caller(None, None)
    for _ in range(OWN_RATE_SAMPLES):  # batch's rate measured: more than one round may wait
        flow.leave(await flow.enter(a, 5, 10), 5, 5)
    running = await flow.enter(b, 5, 10)
    batch = [asyncio.create_task(flow.enter(a, 5, 10)) for _ in range(2)]
    await asyncio.sleep(0)
    interactive = asyncio.create_task(flow.enter(b, 5, 10))
    await asyncio.sleep(0)
    with pytest.raises(OpenAIError) as shed:
        await batch[1]
    assert shed.value.status == 503 and shed.value.code == "shed" and shed.value.headers["Retry-After"] == "1"
    flow.leave(running, 5, 5)
    assert (await interactive).caller.tenant == "default"  # ahead of the batch waiter that came first
    assert not batch[0].done()
    batch[0].cancel()


async def test_batch_yields_to_interactive_in_flight_and_then_resumes() -> None:
    flow = gate(max_in_flight=4, max_waiting=4, batch={"max_wait_s": 10, "max_in_flight_when_higher_active": 0})
    a, b = flow.tenants.caller(f"key-{digest(KEYS['a'])[:12]}", None), flow.tenants.caller(None, None)
    interactive = await flow.enter(b, 5, 10)
    batch = asyncio.create_task(flow.enter(a, 5, 10))
    await asyncio.sleep(0)
    assert not batch.done() and flow.queue.in_flight == 1  # three slots free, yet batch waits
    flow.leave(interactive, 5, 5)
    assert (await batch).caller.priority_name == "batch"


async def test_a_waiter_past_its_deadline_never_starts() -> None:
    flow = gate(max_in_flight=1, max_waiting=4, interactive={"max_wait_s": 0.05})
    caller = flow.tenants.caller(None, None)
    running = await flow.enter(caller, 5, 10)
    started = flow.clock()
    with pytest.raises(OpenAIError) as late:
        await flow.enter(caller, 5, 10)
    assert late.value.status == 503 and late.value.code == "deadline"
    assert flow.clock() - started == pytest.approx(0.05), "refused at its class's max_wait_s, on the loop's clock"
    flow.leave(running, 1, 1)
    assert flow.queue.in_flight == 0 and flow.queue.waiting == 0


async def test_an_arrival_sure_to_miss_its_deadline_is_refused_at_once_with_retry_after() -> None:
    flow = gate(max_in_flight=1, max_waiting=8, interactive={"max_wait_s": 2.5})
    caller = flow.tenants.caller(None, None)
    for _ in range(OWN_RATE_SAMPLES):  # the class's rate measured: more than one round may wait
        flow.leave(await flow.enter(caller, 5, 10), 1, 1)
    running = await flow.enter(caller, 5, 10)
    waiters = [asyncio.create_task(flow.enter(caller, 5, 10)) for _ in range(2)]
    for _ in range(2):  # each request holds the slot 1 s while another waits: 1 s per release
        await asyncio.sleep(1.0)
        flow.leave(running, 1, 1)
        running = await waiters.pop(0)
        waiters.append(asyncio.create_task(flow.enter(caller, 5, 10)))
        await asyncio.sleep(0)
    assert flow.queue.release_interval_s == pytest.approx(1.0)
    asked = flow.clock()
    with pytest.raises(OpenAIError) as late:  # two waiters ahead: ~3 s to start, past max_wait_s
        await flow.enter(caller, 5, 10)
    assert late.value.status == 503 and late.value.code == "late" and late.value.headers["Retry-After"] == "1"
    assert flow.clock() == asked, "refused on arrival, not at the deadline"
    for waiter in waiters:
        waiter.cancel()


async def test_concurrency_limit_is_a_429() -> None:
    flow = gate(default={"max_concurrent": 1})
    caller = flow.tenants.caller(None, None)
    await flow.enter(caller, 5, 10)
    with pytest.raises(OpenAIError) as refused:
        await flow.enter(caller, 5, 10)
    assert refused.value.status == 429 and refused.value.code == "concurrency_limit_exceeded"


def test_a_header_lowers_the_class_never_raises_it() -> None:
    flow = gate()
    a_key = f"key-{digest(KEYS['a'])[:12]}"
    assert flow.tenants.caller(a_key, "interactive").priority_name == "batch"
    assert flow.tenants.caller(None, "batch").priority_name == "batch"
    assert flow.tenants.caller(None, "bogus").priority_name == "interactive"


POOL = {"fake": "fake-batch"}


@pytest.mark.usefixtures("stop_replicas")
async def test_a_class_pool_serves_that_classs_requests_on_another_models_entry() -> None:
    plain = flow_config()
    batch_pool = plain.models[0].model_copy(update={"id": "fake-batch", "cpu_scheduling": "idle"})
    flow = plain.flow_control.model_copy(update={"batch": ClassQueueConfig(max_wait_s=60, model_pools=POOL)})
    config = AppConfig(models=[plain.models[0], batch_pool], flow_control=flow)
    engines = {m.id: FakeEngine(max_model_len=64) for m in config.models}
    replicas = {m.id: await make_replica_async(m, engines[m.id]) for m in config.models}
    app = build_app(config, LocalReplicaClient(replicas))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        batch = await client.post("/v1/chat/completions", json=CHAT, headers=bearer("a"))
        lowered = await client.post("/generate", json={"prompt": "hi"}, headers=bearer("b", **{"x-priority": "batch"}))
        interactive = await client.post("/v1/chat/completions", json=CHAT, headers=bearer("b"))
    assert batch.status_code == lowered.status_code == interactive.status_code == 200
    served = [answer.json().get("model") for answer in (batch, lowered, interactive)]
    assert served == ["fake-batch", "fake-batch", "fake"], [a.json() for a in (batch, lowered, interactive)]
