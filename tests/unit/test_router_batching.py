"""Router batching, admission and the request deadline through the real router and replica code,
in-process with FakeEngine: a router batch is one replica call, and each of its requests ends with
its own ``ResponseEnd`` (a short request is not held by a long one in its batch)."""

from __future__ import annotations

import asyncio
import contextvars
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from serve_app.config import AppConfig, ModelConfig, RouterConfig
from serve_app.engine.fake import FakeEngine
from serve_app.observability import InMemoryMetricsBackend, ServeAppMetrics
from serve_app.replica.contract import Event, RelayRequest, ResponseBody, ResponseEnd
from serve_app.router.batch_dispatch import BatchDispatcher
from serve_app.router.client import LocalReplicaClient, lost
from tests.unit.conftest import build_app, engine_for, make_replica_async
from tests.unit.virtual_time import advance, loop_clock

pytestmark = pytest.mark.usefixtures("stop_replicas")

BATCHING = {"max_batch_size": 4, "batch_timeout_ms": 5}


class CountingClient(LocalReplicaClient):
    """Records every replica call's request ids, to see batches form."""

    def __init__(self, replicas: dict) -> None:
        super().__init__(replicas)
        self.batches: list[list[str]] = []

    @property
    def batch_sizes(self) -> list[int]:
        return [len(b) for b in self.batches]

    def stream(self, model: str, requests: list[RelayRequest]) -> AsyncIterator[list[Event]]:
        self.batches.append([r.request_id for r in requests])
        return super().stream(model, requests)


async def make_app(
    engine: FakeEngine,
    router: RouterConfig | None = None,
    metrics: ServeAppMetrics | None = None,
    client_type: type[CountingClient] = CountingClient,
    **batching: Any,
) -> tuple[httpx.AsyncClient, CountingClient]:
    models = [
        ModelConfig(id="fake", source="/x", batching=batching or {"max_batch_size": 1}),
        ModelConfig(id="emb", source="/y", task="embed", batching=batching or {"max_batch_size": 1}),
    ]
    config = AppConfig(models=models, router=router or RouterConfig())
    client = client_type({m.id: await make_replica_async(m, engine_for(m, engine)) for m in models})
    app = build_app(config, client, metrics, replica_name="router-1")
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test"), client


def completion(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": "fake", "prompt": prompt, "max_tokens": 4} | extra


async def warm_up(http: httpx.AsyncClient, client: CountingClient, store: InMemoryMetricsBackend | None = None) -> None:
    """One request of each model, then forget them: a fresh app's first requests run cold code
    (seconds on a loaded machine), and the requests of a test must reach the batcher together."""
    assert (await http.post("/v1/completions", json=completion("warm"))).status_code == 200
    assert (await http.post("/v1/embeddings", json={"model": "emb", "input": "warm"})).status_code == 200
    client.batches.clear()
    if store is not None:
        store.histograms.clear()


async def test_concurrent_requests_form_one_batch_and_each_gets_its_own_answer() -> None:
    http, client = await make_app(FakeEngine(), max_batch_size=8, batch_timeout_ms=50)
    async with http:
        await warm_up(http, client)
        alone = (await http.post("/v1/completions", json=completion("p3"))).content
        client.batches.clear()
        bodies = [completion(f"p{i}", stream=i % 2 == 1) for i in range(6)]
        responses = await asyncio.gather(*(http.post("/v1/completions", json=b) for b in bodies))
    assert client.batch_sizes == [6]
    assert [r.status_code for r in responses] == [200] * 6
    assert responses[3].headers["content-type"].startswith("text/event-stream")
    assert responses[2].content != responses[4].content
    texts = [r.json()["choices"][0]["text"] for r in responses[::2]]
    assert len(set(texts)) == 3
    streamed = [json.loads(line[6:]) for line in responses[3].text.splitlines() if line.startswith("data: {")]
    assert "".join(e["choices"][0]["text"] for e in streamed).strip() == json.loads(alone)["choices"][0]["text"]


async def test_one_failing_request_fails_only_itself() -> None:
    http, client = await make_app(FakeEngine(fail_on="poison"), max_batch_size=8, batch_timeout_ms=50)
    async with http:
        await warm_up(http, client)
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


async def test_embeddings_are_batched_and_each_gets_its_own_answer() -> None:
    http, client = await make_app(FakeEngine(), max_batch_size=16, batch_timeout_ms=50)
    async with http:
        await warm_up(http, client)
        bodies = [{"model": "emb", "input": [f"text {i}", f"more {i}"]} for i in range(5)]
        responses = await asyncio.gather(*(http.post("/v1/embeddings", json=b) for b in bodies))
        single = (await http.post("/v1/embeddings", json=bodies[3])).content
    assert client.batch_sizes == [5, 1]
    assert responses[3].content == single


@pytest.mark.parametrize("status", [429, 503])
async def test_overflow_is_rejected_with_retry_after(status: int) -> None:
    router = RouterConfig(max_queued_requests=2, overflow_status=status, retry_after_s=3)
    http, _ = await make_app(FakeEngine(token_delay_s=0.02), router=router)
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
    engine = FakeEngine(token_delay_s=0.005)
    http, _ = await make_app(engine, router=router)
    async with http:
        async with http.stream("POST", "/v1/completions", json=completion("s", stream=True, max_tokens=20)) as r:
            assert r.status_code == 200
            async for _ in r.aiter_lines():
                break
        assert (await http.post("/v1/completions", json=completion("t"))).status_code == 200
    assert not engine.running


@pytest.mark.parametrize("batching", [{}, {"max_batch_size": 4, "batch_timeout_ms": 5}])
async def test_no_first_byte_before_the_deadline_is_504_and_frees_everything(batching: dict) -> None:
    store = InMemoryMetricsBackend()
    engine = FakeEngine(token_delay_s=10)
    router = RouterConfig(request_timeout_s=0.1)
    http, _ = await make_app(engine, router=router, metrics=ServeAppMetrics(store), **batching)
    async with http:
        for body in (completion("slow"), completion("slow", stream=True)):
            resp = await asyncio.wait_for(http.post("/v1/completions", json=body), timeout=2)
            assert resp.status_code == 504 and resp.json()["error"]["code"] == "timeout"
    await advance(0.01)
    assert not engine.running and len(engine.aborted) == 2, "the replica's requests are aborted"
    assert store.gauge("serve_app_router_queue_depth", replica="router-1") == 0


async def test_a_stream_past_its_deadline_ends_with_an_error_event() -> None:
    engine = FakeEngine(token_delay_s=0.02)
    http, _ = await make_app(engine, router=RouterConfig(request_timeout_s=0.15))
    async with http:
        resp = await http.post("/v1/completions", json=completion("slow", stream=True, max_tokens=30))
    events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
    assert resp.status_code == 200 and 1 <= len(events) - 2 < 30
    assert json.loads(events[-2])["error"]["message"] == "the request timed out" and events[-1] == "[DONE]"
    await advance(0.01)
    assert not engine.running


class LosesItsReplicaAfterTheFirstEnd(CountingClient):
    """The replica is lost once the batch's first request has ended (what RayReplicaClient yields then)."""

    async def stream(self, model: str, requests: list[RelayRequest]) -> AsyncIterator[list[Event]]:
        async for events in super().stream(model, requests):
            yield events
            if any(isinstance(e, ResponseEnd) for e in events):
                yield lost(requests, "the replica serving this request failed")
                return


async def test_a_replica_lost_mid_batch_fails_only_the_requests_not_yet_ended() -> None:
    engine = FakeEngine(token_delay_s=0.005)
    http, client = await make_app(engine, client_type=LosesItsReplicaAfterTheFirstEnd, **BATCHING)
    async with http:
        bodies = [completion("short", max_tokens=2), completion("long", max_tokens=30), completion("l2", max_tokens=30)]
        responses = await asyncio.gather(*(http.post("/v1/completions", json=b) for b in bodies))
    assert client.batch_sizes == [3]
    assert [r.status_code for r in responses] == [200, 503, 503]
    assert responses[1].json()["error"]["message"] == "the replica serving this request failed"


# -- the dispatcher itself: httpx's ASGI transport delivers a streamed body only once it is complete,
# so it can show neither a client leaving mid-stream nor when each answer ended.


async def _dispatcher(token_delay_s: float, max_batch_size: int, batch_timeout_ms: float = 50) -> tuple:
    """A dispatcher over one FakeEngine replica."""
    engine = FakeEngine(token_delay_s=token_delay_s)
    batching = {"max_batch_size": max_batch_size, "batch_timeout_ms": batch_timeout_ms}
    model = ModelConfig(id="fake", source="/x", batching=batching)
    client = CountingClient({"fake": await make_replica_async(model, engine)})
    return engine, client, BatchDispatcher(client, "fake", model.batching, ServeAppMetrics.disabled(), loop_clock())


def _request(rid: str, max_tokens: int, stream: bool = False) -> RelayRequest:
    body: dict[str, Any] = {"model": "fake", "prompt": f"prompt of {rid}", "max_tokens": max_tokens}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return RelayRequest(rid, "/v1/completions", json.dumps(body).encode(), cost_hint=max_tokens)


async def _collect(stream: AsyncIterator[list[Event]]) -> list[Event]:
    return [event async for events in stream for event in events]


def _end(events: list[Event]) -> ResponseEnd:
    (end,) = [e for e in events if isinstance(e, ResponseEnd)]
    return end


async def _timed(stream: AsyncIterator[list[Event]]) -> tuple[list[Event], float]:
    clock = loop_clock()
    started = clock()
    events = await _collect(stream)
    return events, clock() - started


async def test_a_short_request_ends_with_its_own_answer_while_a_long_one_in_its_batch_runs_on() -> None:
    engine, client, dispatcher = await _dispatcher(0.005, max_batch_size=8, batch_timeout_ms=100)
    _, unbatched_s = await _timed(dispatcher.stream(_request("alone", 4)))  # its own batch of one
    long_task = asyncio.create_task(_collect(dispatcher.stream(_request("long", 160, stream=True))))
    short, batched_s = await _timed(dispatcher.stream(_request("short", 4)))
    assert [sorted(b) for b in client.batches] == [["alone"], ["long", "short"]], "both must share one batch"
    assert _end(short).error is None and _end(short).usage.completion_tokens == 4
    # Held until its batch ended it would take 160 tokens' time (0.8 s), four times over the bound.
    assert batched_s < 2 * unbatched_s, (batched_s, unbatched_s)
    assert not long_task.done() and len(engine.running) == 1, "the long request runs on"
    long_task.cancel()
    await asyncio.gather(long_task, return_exceptions=True)
    await advance(0.01)
    assert not engine.running and len(engine.aborted) == 1
    await dispatcher.close()


async def test_a_client_leaving_a_running_batch_cancels_only_its_own_request() -> None:
    engine, client, dispatcher = await _dispatcher(0.01, max_batch_size=3)
    stayers = [asyncio.create_task(_collect(dispatcher.stream(_request(f"stay{i}", 20, True)))) for i in range(2)]
    leaver = dispatcher.stream(_request("leave", 20, stream=True))
    await anext(leaver)
    await leaver.aclose()  # the client goes away after its first token
    await advance(0.05)
    assert (len(engine.running), len(engine.aborted)) == (2, 1), "only the leaver's engine request is aborted"
    answers = await asyncio.gather(*stayers)
    await dispatcher.close()
    assert client.batch_sizes == [3], "the three requests must have shared one batch"
    for events in answers:
        end = _end(events)
        assert end.error is None and (end.usage.completion_tokens, end.usage.finish_reason) == (20, "length")
        assert b"[DONE]" in b"".join(e.data for e in events if isinstance(e, ResponseBody))


async def test_a_client_leaving_while_queued_is_never_dispatched() -> None:
    engine, client, dispatcher = await _dispatcher(0.001, max_batch_size=4)
    waiting = asyncio.create_task(anext(dispatcher.stream(_request("leave", 3))))
    await advance(0.01)  # queued: the batch closes after 50 ms
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    events = await _collect(dispatcher.stream(_request("stay", 3)))
    await dispatcher.close()
    assert client.batches == [["stay"]], "only the request still waiting goes out"
    assert _end(events).error is None and not engine.aborted


async def test_admission_queue_gauges_follow_admission_and_release() -> None:
    store = InMemoryMetricsBackend()
    http, _ = await make_app(FakeEngine(token_delay_s=0.02), metrics=ServeAppMetrics(store))
    async with http:
        request = asyncio.create_task(http.post("/v1/completions", json=completion("s", max_tokens=8)))
        depths, tokens = [], []
        while not request.done():
            depths.append(store.gauge("serve_app_router_queue_depth", replica="router-1"))
            tokens.append(store.gauge("serve_app_router_queued_tokens", replica="router-1"))
            await advance(0.01)
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
    # n choices are one request to vLLM: one replica call.
    assert store.observations("serve_app_router_batch_size", model="fake") == [1.0, 1.0, 1.0]
    assert store.observations("serve_app_router_batch_size", model="emb") == [1.0]
    waits = store.observations("serve_app_router_queue_wait_seconds", model="fake")
    assert len(waits) == 3 and all(0 <= w < 1 for w in waits)


async def test_batched_requests_record_the_batch_and_each_requests_wait() -> None:
    store = InMemoryMetricsBackend()
    http, client = await make_app(FakeEngine(), metrics=ServeAppMetrics(store), max_batch_size=8, batch_timeout_ms=50)
    async with http:
        await warm_up(http, client, store)
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
    http, _ = await make_app(FakeEngine(token_delay_s=0.02), router=router, metrics=ServeAppMetrics(store))
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

    async def stream(self, model: str, requests: list[RelayRequest]) -> AsyncIterator[list[Event]]:
        self.call_ids.append(REQUEST_ID.get())
        call_id = REQUEST_ID.get() or uuid.uuid4().hex
        if call_id in self.pending:
            self.never_assigned += 1
            await asyncio.Event().wait()
        self.pending.add(call_id)
        try:
            await advance(0.02)  # assignment and the call take a while: batches overlap
        finally:
            self.pending.discard(call_id)
        async for events in super().stream(model, requests):
            yield events


async def test_batched_calls_under_load_do_not_carry_any_requests_context() -> None:
    """The defect behind the embeddings benchmark's timeouts: each batch's replica call ran in a
    copy of one request's context, so overlapping batches went out under one request id."""
    config = AppConfig(models=[ModelConfig(id="emb", source="/y", task="embed", batching=BATCHING)])
    client = IdKeyedAssignmentClient({"emb": await make_replica_async(config.models[0], FakeEngine())})
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(config, client)))

    async def embed_as(i: int) -> int:
        REQUEST_ID.set(f"request-{i}")
        resp = await http.post("http://test/v1/embeddings", json={"model": "emb", "input": f"text {i}"})
        return resp.status_code

    async def client_loop(first: int, count: int, start_after_s: float) -> list[int]:
        await advance(start_after_s)  # staggered clients: batches close on the timer and overlap
        return [await embed_as(i) for i in range(first, first + count)]

    async with http:
        loops = asyncio.gather(*(client_loop(c * 10, 10, c * 0.007) for c in range(6)))
        codes = await asyncio.wait_for(loops, timeout=5)
    assert [c for loop in codes for c in loop] == [200] * 60
    assert client.never_assigned == 0
    assert set(client.call_ids) == {None}, "a batch's call must not run in any one request's context"
    assert max(client.batch_sizes) > 1


class CancellingClient(CountingClient):
    """A replica call cancelled from outside (as Ray Serve cancels a call whose parent request
    was cancelled)."""

    async def stream(self, model: str, requests: list[RelayRequest]) -> AsyncIterator[list[Event]]:
        self.batches.append([r.request_id for r in requests])
        raise asyncio.CancelledError
        yield []  # an async generator, like the client it stands in for


async def test_a_cancelled_batch_call_fails_its_requests_instead_of_hanging() -> None:
    config = AppConfig(models=[ModelConfig(id="emb", source="/y", task="embed", batching=BATCHING)])
    client = CancellingClient({"emb": await make_replica_async(config.models[0], FakeEngine())})
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(config, client)))
    async with http:
        bodies = [{"model": "emb", "input": f"t{i}"} for i in range(3)]
        responses = await asyncio.wait_for(
            asyncio.gather(*(http.post("http://test/v1/embeddings", json=b) for b in bodies)), timeout=5
        )
    assert client.batch_sizes == [3]
    assert [r.status_code for r in responses] == [503] * 3
    assert "Cancelled" in responses[0].json()["error"]["message"]
