"""Preemption of lower-class requests before their first byte (serve_app.core.preemption, the flow
gate and the relay): the rule, the queue's requeue, and the in-process app with a slow fake engine."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import httpx
import pytest

from serve_app.config_model import BatchingConfig
from serve_app.core.flow_queue import FlowQueue, Waiter
from serve_app.core.preemption import PreemptionRule
from serve_app.engine.fake import FakeEngine
from serve_app.observability import InMemoryMetricsBackend, ServeAppMetrics
from serve_app.router.client import LocalReplicaClient
from tests.unit.conftest import build_app, make_replica_async
from tests.unit.test_flow_control import bearer, flow_config

# Batch yields to interactive traffic and is preempted once at most.
PREEMPT = {"batch": {"max_wait_s": 30, "max_preemptions": 1, "max_in_flight_when_higher_active": 0}}
BATCH = {"model": "fake", "prompt": "a long batch job", "max_tokens": 8}  # tenant a: batch, JSON
INTERACTIVE = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": True}


@dataclass
class Req:
    priority: int
    preemptions: int = 0
    answering: bool = False


def test_an_arrival_preempts_only_lower_classes_not_answering_and_under_their_limit() -> None:
    rule = PreemptionRule((0, 2))
    running = [Req(1), Req(1, preemptions=2), Req(1, answering=True), Req(0)]
    assert rule.victims(0, running) == [running[0]]
    assert rule.victims(1, running) == []  # the same class never preempts
    assert not PreemptionRule((0, 0)).enabled and rule.enabled


def test_a_requeued_request_goes_first_in_its_tenants_line_and_frees_its_slot() -> None:
    queue = FlowQueue(max_in_flight=1, max_waiting=4)
    first, second = Waiter("a", 1, 5, 100.0), Waiter("a", 1, 5, 100.0)
    assert queue.arrive(first).outcome == "started" and queue.arrive(second).outcome == "queued"
    queue.requeue(first, deadline=50.0)
    assert (queue.in_flight, queue.attained["a"], first.started, first.deadline) == (0, 0.0, False, 50.0)
    started, _ = queue.next_ready(now=0.0)
    assert started == [first]


async def _post(client: httpx.AsyncClient, body: dict, tenant: str) -> tuple[int, str, float]:
    """Status, body text and seconds until the end of the answer, on the loop's clock."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    resp = await client.post(path, json=body, headers=bearer(tenant))
    return resp.status_code, resp.text, loop.time() - started


@pytest.mark.usefixtures("stop_replicas")
@pytest.mark.parametrize(("max_preemptions", "router_batch"), [(1, 1), (1, 8), (0, 1)])
async def test_an_interactive_start_preempts_a_running_batch_request_which_still_answers_in_full(
    max_preemptions: int, router_batch: int
) -> None:
    config = flow_config(batch=PREEMPT["batch"] | {"max_preemptions": max_preemptions})
    batching = BatchingConfig(max_batch_size=router_batch, batch_timeout_ms=5)
    config.models[0] = config.models[0].model_copy(update={"batching": batching})
    engine = FakeEngine(max_model_len=64, token_delay_s=0.5)  # the batch answer takes 4 s
    backend = InMemoryMetricsBackend()
    replicas = {"fake": await make_replica_async(config.models[0], engine)}
    app = build_app(config, LocalReplicaClient(replicas), ServeAppMetrics(backend))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        batch = asyncio.create_task(_post(client, BATCH, "a"))
        await asyncio.sleep(1.0)  # the batch request runs in the engine
        status, text, interactive_s = await _post(client, INTERACTIVE, "b")
        assert status == 200 and text.rstrip().endswith("data: [DONE]")
        batch_status, batch_text, batch_s = await batch
    answer = json.loads(batch_text)
    assert batch_status == 200 and answer["usage"]["completion_tokens"] == 8  # one whole answer
    assert len(answer["choices"][0]["text"].split()) == 8
    preempted = backend.counter("serve_app_tenant_requests", tenant="a", priority="batch", outcome="preempted")
    if max_preemptions:
        assert preempted == 1 and len(engine.aborted) == 1  # its first run stopped in the engine
        # It started over once the interactive request had ended (batch yields while it runs).
        assert batch_s == pytest.approx(1.0 + interactive_s + 4.0, abs=0.05)
    else:
        assert preempted == 0 and engine.aborted == [] and batch_s == pytest.approx(4.0, abs=0.05)


@pytest.mark.usefixtures("stop_replicas")
async def test_a_batch_stream_that_has_sent_tokens_is_never_preempted() -> None:
    config = flow_config(**PREEMPT)
    engine = FakeEngine(max_model_len=64, token_delay_s=0.5)
    backend = InMemoryMetricsBackend()
    replicas = {"fake": await make_replica_async(config.models[0], engine)}
    app = build_app(config, LocalReplicaClient(replicas), ServeAppMetrics(backend))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        batch = asyncio.create_task(_post(client, BATCH | {"stream": True}, "a"))
        await asyncio.sleep(1.0)  # two tokens streamed to the client
        assert (await _post(client, INTERACTIVE, "b"))[0] == 200
        status, text, _ = await batch
    assert status == 200 and text.count("data: {") == 8 and engine.aborted == []
    assert backend.counter("serve_app_tenant_requests", tenant="a", priority="batch", outcome="preempted") == 0
