"""Router batching and admission through the real router code, in-process with FakeEngine."""

from __future__ import annotations

import asyncio
import contextvars
import uuid

import httpx
import pytest

from serve_app.config import AppConfig, ModelConfig, RouterConfig
from serve_app.engine.fake import FakeEngine
from serve_app.engine.types import GenerationRequest, SamplingOptions
from serve_app.observability import InMemoryMetricsBackend, ServeAppMetrics
from serve_app.router.batch_dispatch import BatchDispatcher
from serve_app.router.client import LocalReplicaClient
from serve_app.router.ingress import build_fastapi
from serve_app.router.service import RouterService
from tests.unit.conftest import make_replica_async

BATCHING = {"max_batch_size": 4, "batch_timeout_ms": 5}


class CountingClient(LocalReplicaClient):
    """Counts replica calls and their sizes, to see batches form."""

    def __init__(self, replicas: dict) -> None:
        super().__init__(replicas)
        self.batch_sizes: list[int] = []
        self.embed_sizes: list[int] = []

    def stream(self, model, requests):
        self.batch_sizes.append(len(requests))
        return super().stream(model, requests)

    async def embed(self, model, request):
        self.embed_sizes.append(len(request.inputs))
        return await super().embed(model, request)


async def make_app(
    engine: FakeEngine, router: RouterConfig | None = None, metrics: ServeAppMetrics | None = None, **batching
) -> tuple:
    models = [
        ModelConfig(id="fake", source="/x", batching=batching or {"max_batch_size": 1}),
        ModelConfig(id="emb", source="/y", task="embed", batching=batching or {"max_batch_size": 1}),
    ]
    config = AppConfig(models=models, router=router or RouterConfig())
    replicas = {m.id: await make_replica_async(m, engine) for m in models}
    client = CountingClient(replicas)
    app = build_fastapi(RouterService(config, client, metrics, replica_name="router-1"))
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://test"), client


def completion(prompt: str, **extra) -> dict:
    return {"model": "fake", "prompt": prompt, "max_tokens": 4} | extra


async def test_concurrent_requests_form_one_batch_and_each_gets_its_own_answer() -> None:
    http, client = await make_app(FakeEngine(), max_batch_size=8, batch_timeout_ms=50)
    async with http:
        alone = [(await http.post("/v1/completions", json=completion(f"p{i}"))).json() for i in range(1)]
        client.batch_sizes.clear()
        responses = await asyncio.gather(*(http.post("/v1/completions", json=completion(f"p{i}")) for i in range(6)))
    assert client.batch_sizes == [6]
    texts = [r.json()["choices"][0]["text"] for r in responses]
    assert texts[0] == alone[0]["choices"][0]["text"]  # same prompt, same answer, batched or not
    assert len(set(texts)) > 1


async def test_one_failing_request_fails_only_itself() -> None:
    http, client = await make_app(FakeEngine(fail_on="poison"), max_batch_size=8, batch_timeout_ms=50)
    async with http:
        prompts = ["good one", "poison pill", "good two"]
        responses = await asyncio.gather(*(http.post("/v1/completions", json=completion(p)) for p in prompts))
    assert client.batch_sizes == [3]
    assert [r.status_code for r in responses] == [200, 500, 200]
    assert responses[1].json()["error"]["message"] == "injected engine failure"


async def test_batch_closes_on_size() -> None:
    http, client = await make_app(FakeEngine(), max_batch_size=2, batch_timeout_ms=5_000)
    async with http:
        responses = await asyncio.wait_for(
            asyncio.gather(*(http.post("/v1/completions", json=completion(f"q{i}")) for i in range(4))), timeout=3
        )
    assert [r.status_code for r in responses] == [200] * 4
    assert client.batch_sizes == [2, 2]


async def test_embeddings_are_batched_and_split_back() -> None:
    http, client = await make_app(FakeEngine(), max_batch_size=16, batch_timeout_ms=50)
    async with http:
        bodies = [{"model": "emb", "input": [f"text {i}", f"more {i}"]} for i in range(5)]
        responses = await asyncio.gather(*(http.post("/v1/embeddings", json=b) for b in bodies))
        single = (await http.post("/v1/embeddings", json=bodies[3])).json()
    assert client.embed_sizes[0] == 10
    assert responses[3].json()["data"] == single["data"]


@pytest.mark.parametrize("status", [429, 503])
async def test_overflow_is_rejected_with_retry_after(status: int) -> None:
    router = RouterConfig(max_queued_requests=2, overflow_status=status, retry_after_s=3)
    http, _ = await make_app(FakeEngine(token_delay_s=0.05), router=router)
    async with http:
        responses = await asyncio.gather(
            *(http.post("/v1/completions", json=completion(f"r{i}", max_tokens=8)) for i in range(5))
        )
        after = await http.post("/v1/completions", json=completion("later"))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 200, status, status, status]
    rejected = next(r for r in responses if r.status_code == status)
    assert rejected.headers["Retry-After"] == "3"
    assert rejected.json()["error"]["code"] == "queue_full"
    assert after.status_code == 200, "capacity must come back once requests finish"


async def test_streaming_releases_admission_when_client_stops_reading() -> None:
    router = RouterConfig(max_queued_requests=1)
    engine = FakeEngine(token_delay_s=0.01)
    http, _ = await make_app(engine, router=router)
    async with http:
        async with http.stream("POST", "/v1/completions", json=completion("s", stream=True, max_tokens=20)) as r:
            assert r.status_code == 200
            async for _ in r.aiter_lines():
                break
        await asyncio.sleep(0.1)
        assert (await http.post("/v1/completions", json=completion("t"))).status_code == 200
    assert not engine.running


async def test_a_client_leaving_a_batch_frees_its_engine_request_while_the_batch_goes_on() -> None:
    # Through the dispatcher itself: httpx's ASGI transport delivers a streamed body only once it
    # is complete, so it cannot show a client leaving mid-stream.
    engine, client, dispatcher = await _dispatcher(0.03, max_batch_size=2)
    sampling = SamplingOptions(max_tokens=30)
    stayer = dispatcher.stream([GenerationRequest("stay", "fake", sampling, prompt="stay here")])
    leaver = dispatcher.stream([GenerationRequest("leave", "fake", sampling, prompt="leave now")])
    stayed = asyncio.create_task(_collect(stayer))
    await anext(leaver)
    await leaver.aclose()  # the client goes away after its first token
    await asyncio.sleep(0.2)
    running_after_leaving = set(engine.running)
    chunks = await stayed
    await dispatcher.close()
    assert client.batch_sizes == [2], "both requests must have shared one batch"
    assert running_after_leaving == {"stay"}, "the leaver's engine request must be aborted, the other one kept"
    assert chunks[-1].completion_tokens == 30 and chunks[-1].finish_reason == "length"


async def test_a_client_leaving_while_queued_is_not_sent_to_the_engine() -> None:
    _, client, dispatcher = await _dispatcher(0.001, max_batch_size=4)
    sampling = SamplingOptions(max_tokens=3)
    leaver = dispatcher.stream([GenerationRequest("leave", "fake", sampling, prompt="leave now")])
    waiting = asyncio.create_task(anext(leaver))
    await asyncio.sleep(0.01)  # queued: the batch closes after 50 ms
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    stayer = dispatcher.stream([GenerationRequest("stay", "fake", sampling, prompt="stay here")])
    chunks = await _collect(stayer)
    await dispatcher.close()
    assert client.batch_sizes == [1], "only the request still waiting goes out"
    assert chunks[-1].finish_reason == "length"


async def _dispatcher(token_delay_s: float, max_batch_size: int) -> tuple:
    """A dispatcher over one FakeEngine replica whose batches close after 50 ms."""
    engine = FakeEngine(token_delay_s=token_delay_s)
    model = ModelConfig(id="fake", source="/x", batching={"max_batch_size": max_batch_size, "batch_timeout_ms": 50})
    client = CountingClient({"fake": await make_replica_async(model, engine)})
    return engine, client, BatchDispatcher(client, model, ServeAppMetrics.disabled())


async def _collect(stream) -> list:
    return [chunk async for chunk in stream]


async def test_admission_queue_gauges_follow_admission_and_release() -> None:
    store = InMemoryMetricsBackend()
    http, _ = await make_app(FakeEngine(token_delay_s=0.05), metrics=ServeAppMetrics(store))
    async with http:
        request = asyncio.create_task(http.post("/v1/completions", json=completion("s", max_tokens=8)))
        depths, tokens = [], []
        while not request.done():
            depths.append(store.gauge("serve_app_router_queue_depth", replica="router-1"))
            tokens.append(store.gauge("serve_app_router_queued_tokens", replica="router-1"))
            await asyncio.sleep(0.01)
        assert request.result().status_code == 200
    assert 1 in depths, "the gauge must show the request while it is admitted"
    assert max(t or 0 for t in tokens) >= 8  # the estimate: prompt tokens + max_tokens
    assert store.gauge("serve_app_router_queue_depth", replica="router-1") == 0
    assert store.gauge("serve_app_router_queued_tokens", replica="router-1") == 0


async def test_unbatched_requests_record_batches_of_one_and_their_queue_wait() -> None:
    store = InMemoryMetricsBackend()
    http, _ = await make_app(FakeEngine(), metrics=ServeAppMetrics(store))
    async with http:
        for i in range(2):
            assert (await http.post("/v1/completions", json=completion(f"u{i}"))).status_code == 200
        assert (await http.post("/v1/completions", json=completion("n", n=3))).status_code == 200
        assert (await http.post("/v1/embeddings", json={"model": "emb", "input": "x"})).status_code == 200
    assert store.observations("serve_app_router_batch_size", model="fake") == [1.0, 1.0, 3.0]
    assert store.observations("serve_app_router_batch_size", model="emb") == [1.0]
    waits = store.observations("serve_app_router_queue_wait_seconds", model="fake")
    assert len(waits) == 3 and all(0 <= w < 1 for w in waits)


async def test_batched_requests_record_the_batch_and_each_requests_wait() -> None:
    store = InMemoryMetricsBackend()
    http, _ = await make_app(FakeEngine(), metrics=ServeAppMetrics(store), max_batch_size=8, batch_timeout_ms=50)
    async with http:
        responses = await asyncio.gather(*(http.post("/v1/completions", json=completion(f"b{i}")) for i in range(3)))
        assert [r.status_code for r in responses] == [200] * 3
        bodies = [{"model": "emb", "input": f"e{i}"} for i in range(2)]
        await asyncio.gather(*(http.post("/v1/embeddings", json=b) for b in bodies))
    assert store.observations("serve_app_router_batch_size", model="fake") == [3.0]
    assert store.observations("serve_app_router_batch_size", model="emb") == [2.0]
    waits = store.observations("serve_app_router_queue_wait_seconds", model="fake")
    # The batch closes 50 ms after its first request: that request waited at least that long.
    assert len(waits) == 3 and max(waits) >= 0.045
    assert len(store.observations("serve_app_router_queue_wait_seconds", model="emb")) == 2


async def test_rejections_are_counted_by_reason() -> None:
    store = InMemoryMetricsBackend()
    router = RouterConfig(max_queued_requests=1)
    http, _ = await make_app(FakeEngine(token_delay_s=0.05), router=router, metrics=ServeAppMetrics(store))
    async with http:
        responses = await asyncio.gather(
            *(http.post("/v1/completions", json=completion(f"r{i}", max_tokens=8)) for i in range(3))
        )
    assert sorted(r.status_code for r in responses) == [200, 429, 429]
    assert store.counter("serve_app_router_rejections", reason="queue_full") == 2
    assert store.gauge("serve_app_router_queue_depth", replica="router-1") == 0


# Per-request state that a serving framework keeps in a context variable (Ray Serve keeps the
# request id there; a replica call made from a request's context carries that id).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


class IdKeyedAssignmentClient(CountingClient):
    """Assigns replica calls the way Ray Serve's request router does: a call carries the request
    id of the context it is made from (a fresh one outside any request), calls pending assignment
    are indexed by that id, and a second call whose id is already pending is never assigned."""

    def __init__(self, replicas: dict) -> None:
        super().__init__(replicas)
        self.pending: set[str] = set()
        self.call_ids: list[str | None] = []
        self.never_assigned = 0

    async def embed(self, model, request):
        self.call_ids.append(REQUEST_ID.get())
        call_id = REQUEST_ID.get() or uuid.uuid4().hex
        if call_id in self.pending:
            self.never_assigned += 1
            await asyncio.Event().wait()
        self.pending.add(call_id)
        try:
            await asyncio.sleep(0.02)  # assignment and the call take a while: batches overlap
        finally:
            self.pending.discard(call_id)
        return await super().embed(model, request)


async def test_batched_embeddings_under_load_do_not_carry_any_requests_context() -> None:
    """The defect behind the embeddings benchmark's timeouts: each batch's replica call ran in a
    copy of one request's context, so overlapping batches went out under one request id."""
    config = AppConfig(models=[ModelConfig(id="emb", source="/y", task="embed", batching=BATCHING)])
    client = IdKeyedAssignmentClient({"emb": await make_replica_async(config.models[0], FakeEngine())})
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=build_fastapi(RouterService(config, client))))

    async def embed_as(i: int) -> int:
        REQUEST_ID.set(f"request-{i}")
        resp = await http.post("http://test/v1/embeddings", json={"model": "emb", "input": f"text {i}"})
        return resp.status_code

    async def client_loop(first: int, count: int, start_after_s: float) -> list[int]:
        await asyncio.sleep(start_after_s)  # staggered clients: batches close on the timer and overlap
        return [await embed_as(i) for i in range(first, first + count)]

    async with http:
        loops = asyncio.gather(*(client_loop(c * 10, 10, c * 0.007) for c in range(6)))
        codes = await asyncio.wait_for(loops, timeout=5)
    assert [c for loop in codes for c in loop] == [200] * 60
    assert client.never_assigned == 0
    assert set(client.call_ids) == {None}, "a batch's call must not run in any one request's context"
    assert max(client.embed_sizes) > 1


class CancellingClient(CountingClient):
    """A replica call cancelled from outside (as Ray Serve cancels a call whose parent request
    was cancelled)."""

    async def embed(self, model, request):
        self.embed_sizes.append(len(request.inputs))
        raise asyncio.CancelledError


async def test_a_cancelled_batch_call_fails_its_requests_instead_of_hanging() -> None:
    config = AppConfig(models=[ModelConfig(id="emb", source="/y", task="embed", batching=BATCHING)])
    client = CancellingClient({"emb": await make_replica_async(config.models[0], FakeEngine())})
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=build_fastapi(RouterService(config, client))))
    async with http:
        bodies = [{"model": "emb", "input": f"t{i}"} for i in range(3)]
        responses = await asyncio.wait_for(
            asyncio.gather(*(http.post("http://test/v1/embeddings", json=b) for b in bodies)), timeout=5
        )
    assert client.embed_sizes == [3]
    assert [r.status_code for r in responses] == [503] * 3
    assert "cancelled" in responses[0].json()["error"]["message"]
