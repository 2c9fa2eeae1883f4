"""The real stack on the embedded model: Ray Serve + router + vLLM CPU + SmolLM2-135M-Instruct."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

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


def test_prompt_longer_than_max_model_len_is_400(app: RunningApp) -> None:
    long = [{"role": "user", "content": "Paris is lovely. " * 300}]
    resp = chat(app, messages=long)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "context_length_exceeded"


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
