"""What the router owns on the HTTP path, end to end in-process: router + replica code + FakeEngine's
small OpenAI server (no Ray, no vLLM). Response shapes and parameter validation are vLLM's: here
the server's bytes must come through unchanged, and the router adds only its caps and guards."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient

from serve_app.config import AppConfig, ModelConfig
from serve_app.engine.fake import FakeEngine
from tests.unit.conftest import app_client

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5}
COMPLETION = {"model": "fake", "prompt": "once upon a time", "max_tokens": 6}


def direct(engine: FakeEngine, path: str, body: dict) -> tuple[int, bytes, str]:
    """What the model server itself answers, without the router."""
    with TestClient(engine.app) as server:
        resp = server.post(path, json=body)
    return resp.status_code, resp.content, resp.headers["content-type"]


def sse_events(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]


def assert_router_error(resp, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert (err["param"], err["code"] if code else None) == (param, code)
    return err


@pytest.mark.parametrize(("path", "body"), [("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)])
def test_a_json_answer_is_relayed_byte_for_byte(client: TestClient, fake_engine: FakeEngine, path, body) -> None:
    resp = client.post(path, json=body)
    assert (resp.status_code, resp.content, resp.headers["content-type"]) == direct(fake_engine, path, body)
    assert resp.headers["X-Request-Id"]


def test_the_servers_own_errors_are_relayed_unchanged(client: TestClient, fake_engine: FakeEngine) -> None:
    too_long = CHAT | {"messages": [{"role": "user", "content": "word " * 100}]}
    resp = client.post("/v1/chat/completions", json=too_long)
    assert (resp.status_code, resp.content) == direct(fake_engine, "/v1/chat/completions", too_long)[:2]
    assert resp.json()["error"]["type"] == "BadRequestError"  # vLLM's shape, not the router's


def test_a_stream_the_client_asked_usage_of_keeps_its_usage_event(client: TestClient, fake_engine) -> None:
    body = COMPLETION | {"stream": True, "stream_options": {"include_usage": True}}
    resp = client.post("/v1/completions", json=body)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    usage_id = re.compile(r'"id":"fake-\d+"')  # the only part that differs between two runs
    _, expected, _ = direct(fake_engine, "/v1/completions", body)
    assert usage_id.sub("", resp.text) == usage_id.sub("", expected.decode())
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]" and json.loads(events[-2])["usage"]["completion_tokens"] == 6


@pytest.mark.parametrize("options", [None, {"include_usage": False}, {"continuous_usage_stats": False}])
def test_a_stream_is_relayed_as_the_server_wrote_it(client: TestClient, fake_engine, options) -> None:
    extra = {"stream_options": options} if options is not None else {}
    body = CHAT | {"stream": True} | extra
    resp = client.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200
    assert resp.content == direct(fake_engine, "/v1/chat/completions", body)[1]
    assert all(json.loads(e)["choices"] for e in sse_events(resp.text)[:-1])


def test_embeddings_are_relayed(client: TestClient) -> None:
    resp = client.post("/v1/embeddings", json={"model": "fake-embed", "input": ["a", "b"]})
    assert resp.status_code == 200
    assert [d["index"] for d in resp.json()["data"]] == [0, 1]


@pytest.mark.parametrize(
    ("path", "fields", "param"),
    [
        ("/v1/chat/completions", {"n": 5}, "n"),
        ("/v1/completions", {"best_of": 9}, "best_of"),
        ("/v1/chat/completions", {"max_tokens": 33}, "max_tokens"),
        ("/v1/chat/completions", {"max_tokens": 10**30}, "max_tokens"),
        ("/v1/chat/completions", {"max_completion_tokens": 33}, "max_completion_tokens"),
        ("/v1/chat/completions", {"max_tokens": 33, "stream": True}, "max_tokens"),
        ("/v1/completions", {"n": 5, "stream": True}, "n"),
    ],
)
def test_the_routers_caps_are_400s_naming_the_parameter(client: TestClient, path, fields, param) -> None:
    body = (CHAT if path.endswith("chat/completions") else COMPLETION) | fields
    assert_router_error(client.post(path, json=body), 400, param)


def test_requests_at_the_caps_are_served(client: TestClient) -> None:
    assert client.post("/v1/chat/completions", json=CHAT | {"max_tokens": 32, "n": 4}).status_code == 200


def test_unknown_model_is_404(client: TestClient) -> None:
    for path, body in [("/v1/chat/completions", CHAT), ("/v1/embeddings", {"input": "a"}), ("/generate", {})]:
        resp = client.post(path, json=body | {"model": "nope", "prompt": "hi"})
        assert_router_error(resp, 404, "model", "model_not_found")


def test_a_request_without_a_model_goes_to_the_first_model(client: TestClient) -> None:
    resp = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})
    assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize(
    "content", [b"{not json", b"", b"[1, 2]", b"null", b'"text"', b"42", b'{"a": "\xff"}', b"[" * 100_000]
)
def test_a_body_that_is_not_a_json_object_is_400(client: TestClient, content: bytes) -> None:
    resp = client.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
    assert_router_error(resp, 400, None, "invalid_json")


def test_body_over_limit_is_413(client: TestClient) -> None:
    big = {"model": "fake", "prompt": "x" * (3 * 1024 * 1024)}
    assert client.post("/v1/completions", json=big).status_code == 413


@pytest.mark.parametrize("path", ["/v1/nothing", "/v2/chat/completions", "/metrics", "/health/deep"])
def test_paths_the_server_lacks_or_hides_are_404(client: TestClient, fake_engine, path: str) -> None:
    resp = client.post(path, json=CHAT)
    assert resp.status_code == 404, resp.text
    assert resp.json()["error"]["type"] == "NotFoundError"


def test_operator_routes_of_the_server_stay_hidden(client: TestClient, fake_engine: FakeEngine) -> None:
    with TestClient(fake_engine.app) as server:
        assert server.get("/metrics").status_code == 200  # the server has it ...
    assert client.post("/metrics", json={}).status_code == 404  # ... clients do not reach it
    assert client.get("/metrics").status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/nothing", 404),
        ("GET", "/v1/chat/completions", 405),
        ("GET", "/v1/x?a=1", 404),
        ("PUT", "/v1/nothing", 404),
        ("DELETE", "/v1/chat/completions", 405),
        ("PATCH", "/v1/completions", 405),
        ("PUT", "/generate", 405),  # the router's own route
    ],
)
def test_other_methods_are_answered_as_the_server_answers_them(
    client: TestClient, fake_engine, method: str, path: str, status: int
) -> None:
    resp = client.request(method, path, content=b"{}" if method != "GET" else None)
    assert resp.status_code == status, resp.text
    # The model server's errors carry the status as code (vLLM's shape); the router's own, OpenAI's.
    assert resp.json()["error"]["code"] == (None if path == "/generate" else status)
    if status == 405:
        assert resp.headers["allow"] == "POST"


def test_generate_translates_to_a_completion(client: TestClient, fake_engine: FakeEngine) -> None:
    resp = client.post("/generate", json={"prompt": "hi there", "max_new_tokens": 3})
    assert resp.status_code == 200, resp.text
    expected = " ".join(fake_engine.reply("hi there", 3))
    assert resp.json() == {
        "text": expected,
        "model": "fake",
        "finish_reason": "length",
        "prompt_tokens": 2,
        "completion_tokens": 3,
    }


def test_generates_default_length_fits_a_lower_limit_and_an_explicit_one_is_checked(client: TestClient) -> None:
    """/generate's default (64) is cut to the model's limit (32 here); an explicit 64 is refused."""
    resp = client.post("/generate", json={"prompt": "hi"})
    assert resp.status_code == 200 and resp.json()["completion_tokens"] == 32
    assert_router_error(client.post("/generate", json={"prompt": "hi", "max_new_tokens": 64}), 400, "max_new_tokens")


def test_generate_relays_the_servers_error(client: TestClient) -> None:
    resp = client.post("/generate", json={"prompt": "w " * 100, "max_new_tokens": 3})
    assert resp.status_code == 400 and resp.json()["error"]["type"] == "BadRequestError"


def test_models_lists_the_servers_cards_of_every_model(client: TestClient) -> None:
    resp = client.get("/v1/models")
    assert resp.status_code == 200
    cards = resp.json()["data"]
    assert [c["id"] for c in cards] == ["fake", "fake-embed"]
    assert cards[0]["max_model_len"] == 64  # the server's own card, not one made up by the router


def test_ready_and_health(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    resp = client.get("/ready")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"status": "ready", "models": {"fake": "ok", "fake-embed": "ok"}}


def test_not_ready_when_a_models_probe_fails_or_misses_its_expected_answer() -> None:
    config = AppConfig(
        models=[
            ModelConfig(id="fake", source="/x", readiness_prompt="poison"),
            ModelConfig(id="other", source="/y", readiness_expect="paris"),
        ]
    )
    with app_client(config, FakeEngine(fail_on="poison")) as http:
        resp = http.get("/ready")
    assert resp.status_code == 503
    detail = resp.json()["models"]
    assert detail["fake"].startswith("probe failed") and "lacks 'paris'" in detail["other"]
