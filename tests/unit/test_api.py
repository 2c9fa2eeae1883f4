"""The HTTP API end to end in-process: router + replica code + FakeEngine (no Ray, no vLLM)."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5}


def sse_events(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]


def assert_openai_error(resp, status: int, param: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if param is not None:
        assert err["param"] == param
    return err


def test_chat_completion_shape(client: TestClient) -> None:
    resp = client.post("/v1/chat/completions", json=CHAT)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split()) == 5
    assert choice["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
    assert resp.headers["X-Request-Id"]


def test_streaming_reassembles_to_non_streaming(client: TestClient) -> None:
    full = client.post("/v1/chat/completions", json=CHAT).json()["choices"][0]["message"]["content"]
    resp = client.post("/v1/chat/completions", json=CHAT | {"stream": True, "stream_options": {"include_usage": True}})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == full
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["usage"]["completion_tokens"] == 5


def test_completions_n_choices_differ_by_seed(client: TestClient) -> None:
    body = {"model": "fake", "prompt": "once upon", "max_tokens": 6, "n": 3, "seed": 7}
    resp = client.post("/v1/completions", json=body)
    assert resp.status_code == 200, resp.text
    texts = [c["text"] for c in resp.json()["choices"]]
    assert len(texts) == 3 and len(set(texts)) > 1
    assert resp.json()["usage"]["completion_tokens"] == 18


def test_generate_simple_api(client: TestClient) -> None:
    resp = client.post("/generate", json={"prompt": "hi", "max_new_tokens": 3})
    assert resp.status_code == 200
    assert len(resp.json()["text"].split()) == 3


def test_models_lists_every_model(client: TestClient) -> None:
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids == ["fake", "fake-embed"]


def test_ready_and_health(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    resp = client.get("/ready")
    assert resp.status_code == 200, resp.text


def test_embeddings(client: TestClient) -> None:
    resp = client.post("/v1/embeddings", json={"model": "fake-embed", "input": ["a", "b"]})
    assert resp.status_code == 200
    assert [d["index"] for d in resp.json()["data"]] == [0, 1]


def test_unknown_model_is_404(client: TestClient) -> None:
    err = assert_openai_error(client.post("/v1/chat/completions", json=CHAT | {"model": "nope"}), 404, "model")
    assert err["code"] == "model_not_found"


def test_prompt_over_max_model_len_is_400(client: TestClient) -> None:
    long = {"role": "user", "content": "word " * 100}
    assert_openai_error(client.post("/v1/chat/completions", json=CHAT | {"messages": [long]}), 400, "messages")
    stream = CHAT | {"messages": [long], "stream": True}
    assert_openai_error(client.post("/v1/chat/completions", json=stream), 400)


def test_bad_inputs_are_openai_errors(client: TestClient) -> None:
    cases = [
        ({"model": "fake"}, "messages"),
        (CHAT | {"temperature": 5}, "temperature"),
        (CHAT | {"max_tokens": -1}, "max_tokens"),
        (CHAT | {"max_tokens": 10_000}, "max_tokens"),
        (CHAT | {"n": 99}, "n"),
        (CHAT | {"bogus": 1}, "bogus"),
        (CHAT | {"messages": []}, "messages"),
        (CHAT | {"messages": [{"role": "wizard", "content": "x"}]}, None),
        (CHAT | {"stop": ["x"] * 100}, "stop"),
        (CHAT | {"logprobs": True}, "logprobs"),
    ]
    for body, param in cases:
        err = assert_openai_error(client.post("/v1/chat/completions", json=body), 400)
        if param:
            assert param in (err["param"] or "") + err["message"], (body, err)


def test_malformed_json_and_wrong_route(client: TestClient) -> None:
    resp = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert_openai_error(resp, 400)
    assert_openai_error(client.get("/v1/nothing"), 404)


def test_body_over_limit_is_413(client: TestClient) -> None:
    big = {"model": "fake", "prompt": "x" * (3 * 1024 * 1024)}
    assert_openai_error(client.post("/v1/completions", json=big), 413)


def test_embedding_model_rejects_chat(client: TestClient) -> None:
    assert_openai_error(client.post("/v1/chat/completions", json=CHAT | {"model": "fake-embed"}), 400, "model")
