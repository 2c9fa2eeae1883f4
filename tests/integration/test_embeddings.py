"""Embeddings on the real stack: vLLM pooling runner with the embedded all-MiniLM-L6-v2, router
batching many small requests into one replica call."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from serve_app.config import app_args_from_serve_file, load_config

pytestmark = pytest.mark.integration

MODEL = "all-minilm-l6-v2"
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "embeddings.yaml"


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_embeddings_batched_through_the_router(serve_app_factory) -> None:
    args = app_args_from_serve_file(CONFIG)
    args["models"][0].pop("autoscaling")
    args["models"][0]["batching"] = {"max_batch_size": 16, "batch_timeout_ms": 20}
    app = serve_app_factory(load_config(args))

    def embed(texts: list[str]) -> list[list[float]]:
        resp = httpx.post(f"{app.base_url}/v1/embeddings", json={"model": MODEL, "input": texts}, timeout=120)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["usage"]["prompt_tokens"] > 0
        return [d["embedding"] for d in sorted(body["data"], key=lambda d: d["index"])]

    same, close, far = embed(["The capital of France is Paris.", "Paris is France's capital.", "Bananas are yellow."])
    assert len(same) == 384
    assert cosine(same, close) > 0.8 > 0.3 > cosine(same, far)

    texts = [f"sentence number {i} about the weather" for i in range(24)]
    alone = [embed([t])[0] for t in texts[:3]]
    with ThreadPoolExecutor(max_workers=24) as pool:
        together = list(pool.map(lambda t: embed([t])[0], texts))
    for a, b in zip(alone, together[:3], strict=True):
        assert cosine(a, b) > 0.9999, "batching must not change a request's embedding"

    too_long = httpx.post(f"{app.base_url}/v1/embeddings", json={"model": MODEL, "input": "word " * 600}, timeout=60)
    assert too_long.status_code == 400
    wrong = httpx.post(
        f"{app.base_url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        timeout=60,
    )
    # vLLM's pooling server has no chat route: the replica answers 404 with an OpenAI error body.
    assert wrong.status_code == 404 and "message" in wrong.json()["error"], wrong.text

    # The official SDK as called by default sends encoding_format=base64; vLLM answers it.
    client = openai.OpenAI(base_url=f"{app.base_url}/v1", api_key="unused", max_retries=0)
    default = client.embeddings.create(model=MODEL, input="The capital of France is Paris.")
    floats = client.embeddings.create(model=MODEL, input="The capital of France is Paris.", encoding_format="float")
    assert cosine(default.data[0].embedding, floats.data[0].embedding) > 0.9999
    assert cosine(default.data[0].embedding, same) > 0.9999
