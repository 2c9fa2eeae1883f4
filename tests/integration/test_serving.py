"""The real stack on the embedded model: Ray Serve + router + vLLM CPU + SmolLM2-135M-Instruct."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from serve_app.app import replica_deployment_name
from tests.integration.conftest import RunningApp, local_config

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def app(serve_app_factory) -> Iterator[RunningApp]:
    running = serve_app_factory(local_config(max_model_len=512))
    print(f"\nserve-app ready {running.ready_after_s:.1f} s after deploy")
    yield running


def chat(app: RunningApp, **extra) -> httpx.Response:
    body = {"model": MODEL, "messages": QUESTION, "temperature": 0, "max_tokens": 24} | extra
    return httpx.post(f"{app.base_url}/v1/chat/completions", json=body, timeout=120)


def test_greedy_chat_answers_paris(app: RunningApp) -> None:
    resp = chat(app)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert "Paris" in body["choices"][0]["message"]["content"]
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["prompt_tokens"] > 5 and 0 < usage["completion_tokens"] <= 24
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_streaming_reassembles_to_non_streaming(app: RunningApp) -> None:
    full = chat(app).json()["choices"][0]["message"]["content"]
    pieces = []
    events = 0
    with httpx.stream(
        "POST",
        f"{app.base_url}/v1/chat/completions",
        json={"model": MODEL, "messages": QUESTION, "temperature": 0, "max_tokens": 24, "stream": True},
        timeout=120,
    ) as resp:
        assert resp.status_code == 200
        lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        chunk = json.loads(line[6:])
        events += 1
        pieces.append(chunk["choices"][0]["delta"].get("content", ""))
    assert "".join(pieces) == full
    assert events >= 3, "tokens must arrive as separate events, not one buffered blob"


def test_completions_endpoint(app: RunningApp) -> None:
    body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 5, "temperature": 0}
    resp = httpx.post(f"{app.base_url}/v1/completions", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    assert resp.json()["object"] == "text_completion"
    assert resp.json()["usage"]["completion_tokens"] == 5


def test_generate_simple_api(app: RunningApp) -> None:
    resp = httpx.post(
        f"{app.base_url}/generate", json={"prompt": "The capital of France is", "max_new_tokens": 8}, timeout=120
    )
    assert resp.status_code == 200, resp.text
    assert "Paris" in resp.json()["text"]


def test_models_and_probes(app: RunningApp) -> None:
    models = httpx.get(f"{app.base_url}/v1/models", timeout=30).json()
    assert [m["id"] for m in models["data"]] == [MODEL]
    assert httpx.get(f"{app.base_url}/health", timeout=30).status_code == 200
    ready = httpx.get(f"{app.base_url}/ready", timeout=60)
    assert ready.status_code == 200 and ready.json()["models"][MODEL] == "ok"


def json_log_lines(containing: str) -> list[dict[str, Any]]:
    """JSON lines holding ``containing`` in this Ray session's worker logs (deployments' stderr)."""
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    found = []
    for path in logs.rglob("*.err"):
        for line in path.read_text(errors="replace").splitlines():
            if containing in line and line.startswith("{"):
                found.append(json.loads(line))
    return found


def test_request_id_is_echoed_and_joins_router_and_replica_log_lines(app: RunningApp) -> None:
    assert httpx.get(f"{app.base_url}/v1/models", timeout=30).headers["X-Request-Id"]
    request_id = f"itest-{uuid.uuid4().hex[:12]}"
    body = {"model": MODEL, "messages": QUESTION, "temperature": 0, "max_tokens": 4}
    headers = {"X-Request-Id": request_id}
    resp = httpx.post(f"{app.base_url}/v1/chat/completions", json=body, headers=headers, timeout=120)
    assert resp.status_code == 200 and resp.headers["X-Request-Id"] == request_id
    deadline = time.monotonic() + 15
    while len(lines := json_log_lines(request_id)) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    by_logger = {line["logger"]: line for line in lines if line.get("request_id") == request_id}
    assert by_logger.keys() == {"serve_app.requests", "serve_app.replica"}, lines
    assert by_logger["serve_app.requests"]["status"] == 200
    assert by_logger["serve_app.replica"]["completion_tokens"] == resp.json()["usage"]["completion_tokens"]
    assert all(QUESTION[0]["content"] not in json.dumps(line) for line in lines)  # no prompts by default


def test_prompt_longer_than_max_model_len_is_400(app: RunningApp) -> None:
    long = [{"role": "user", "content": "Paris is lovely. " * 300}]
    resp = chat(app, messages=long)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]  # vLLM's own answer, relayed
    assert set(error) >= {"message", "type", "param", "code"} and "context length" in error["message"], error


def test_unknown_model_is_404(app: RunningApp) -> None:
    resp = chat(app, model="no-such-model")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "model_not_found"


def test_openai_sdk_sync_and_streaming(app: RunningApp) -> None:
    client = openai.OpenAI(base_url=f"{app.base_url}/v1", api_key="unused", max_retries=0)
    answer = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=24)
    assert "Paris" in (answer.choices[0].message.content or "")
    stream = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=24, stream=True)
    text = "".join((c.choices[0].delta.content or "") for c in stream if c.choices)
    assert text == answer.choices[0].message.content
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=QUESTION, max_tokens=4)


DISCONNECTS = 24
ABORT_BUDGET_S = 2.0


def replica_engine_stats(app: RunningApp) -> dict[str, Any]:
    """The replica's own view: its in-flight engine requests and vLLM's running/waiting counts."""
    from ray import serve

    handle = serve.get_deployment_handle(replica_deployment_name(app.config.models[0]), app_name="serve-app")
    return handle.engine_stats.remote().result(timeout_s=30)


def engine_busy(stats: dict[str, Any]) -> int:
    return stats["outstanding_requests"] + stats["running"] + stats["waiting"]


async def _open_streams_then_disconnect(app: RunningApp, count: int) -> float:
    """Opens ``count`` long streams, waits for every first token, drops every connection at
    once; returns the monotonic time of the last drop."""
    body = {"model": MODEL, "prompt": "Count from one to a thousand:", "max_tokens": 400, "ignore_eos": True}
    first_tokens = [asyncio.Event() for _ in range(count)]
    drop = asyncio.Event()

    async def stream(http: httpx.AsyncClient, got_first: asyncio.Event) -> None:
        async with http.stream("POST", "/v1/completions", json=body | {"stream": True}) as resp:
            assert resp.status_code == 200
            lines = resp.aiter_lines()  # held: a finalized line iterator would close the connection
            async for line in lines:
                if line.startswith("data: "):
                    got_first.set()
                    break
            await drop.wait()  # leaving the block closes the half-read response: a disconnect

    async with httpx.AsyncClient(base_url=app.base_url, timeout=120, limits=httpx.Limits(max_connections=count)) as h:
        tasks = [asyncio.create_task(stream(h, ev)) for ev in first_tokens]
        await asyncio.wait_for(asyncio.gather(*(ev.wait() for ev in first_tokens)), timeout=180)
        busy = await asyncio.to_thread(replica_engine_stats, app)
        assert busy["outstanding_requests"] == count, busy  # all still generating: 400 tokens take long
        drop.set()
        await asyncio.gather(*tasks)
        return time.monotonic()


def test_disconnect_burst_aborts_every_engine_request_within_2_s(app: RunningApp) -> None:
    dropped_at = asyncio.run(_open_streams_then_disconnect(app, DISCONNECTS))
    while engine_busy(stats := replica_engine_stats(app)) and time.monotonic() - dropped_at < 30:
        time.sleep(0.05)
    idle_after_s = time.monotonic() - dropped_at
    print(f"\n{DISCONNECTS} disconnects: engine idle {idle_after_s:.2f} s after the last one ({stats})")
    assert engine_busy(stats) == 0, stats
    assert idle_after_s <= ABORT_BUDGET_S
