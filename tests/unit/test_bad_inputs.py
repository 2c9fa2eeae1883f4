"""Bad inputs, table-driven: every case gets a 4xx OpenAI-style error body, and a normal chat
request still succeeds right after it (router + replica code + FakeEngine in-process).

The table also writes docs/bad-inputs.md from the answers the app gives:
``python -m tests.unit.test_bad_inputs`` regenerates it, ``test_doc_is_up_to_date`` checks it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from serve_app.config import AppConfig, ModelConfig
from serve_app.engine.fake import FakeEngine
from serve_app.router.client import LocalReplicaClient
from serve_app.router.ingress import build_fastapi
from serve_app.router.service import RouterService
from tests.unit.conftest import make_replica

DOC = Path(__file__).resolve().parents[2] / "docs" / "bad-inputs.md"
CHAT_PATH = "/v1/chat/completions"
CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5}
COMPLETION = {"model": "fake", "prompt": "once upon", "max_tokens": 5}
JSON_TYPE = {"content-type": "application/json"}
_NO_BODY = object()  # a case without a body (None would be sent as JSON null)


@dataclass(frozen=True)
class Case:
    id: str
    what: str
    status: int
    body: Any = _NO_BODY  # sent as JSON
    content: bytes | None = None  # sent as is, with a JSON content type unless headers say otherwise
    chunked: bool = False  # send content in 1 MiB chunks without Content-Length
    method: str = "POST"
    path: str = CHAT_PATH
    headers: dict[str, Any] = field(default_factory=dict)
    param: str | None = None  # the error's param, where the case is about one field


def chat(**fields: Any) -> dict[str, Any]:
    return CHAT | fields


def bad_chat(id: str, what: str, param: str | None, status: int = 400, **fields: Any) -> Case:
    return Case(id, what, status, body=chat(**fields), param=param)


def bad_message(id: str, what: str, param: str | None, **fields: Any) -> Case:
    return Case(id, what, 400, body=chat(messages=[{"role": "user", "content": "hi"} | fields]), param=param)


def bad_raw(id: str, what: str, content: bytes, status: int = 400, **kwargs: Any) -> Case:
    return Case(id, what, status, content=content, **kwargs)


def bad_other(path: str, id: str, what: str, param: str | None, body: Any, status: int = 400) -> Case:
    return Case(id, what, status, body=body, path=path, param=param)


def with_header(id: str, what: str, status: int, name: str, value: Any, param: str | None = None) -> Case:
    return Case(id, what, status, body=CHAT, headers={name: value}, param=param)


def nested(depth: int) -> bytes:
    return b'{"model": "fake", "messages": [], "user": ' + b"[" * depth + b"]" * depth + b"}"


CHAT_BYTES = json.dumps(CHAT).encode()
COMPLETIONS, GENERATE, EMBEDDINGS = "/v1/completions", "/generate", "/v1/embeddings"
EMBED = {"model": "fake-embed", "input": "a"}
FORM = "application/x-www-form-urlencoded"

CASES = [
    # --- the body as a whole
    bad_raw("malformed-json", "truncated JSON", b'{"model": "fake", "messages": ['),
    bad_raw("not-json", "plain text with a JSON content type", b"hello"),
    bad_raw("trailing-garbage", "valid JSON followed by junk", CHAT_BYTES + b"}x"),
    bad_raw("empty-body", "no body at all", b""),
    bad_raw("json-null", "the body is JSON null", b"null"),
    bad_raw("json-list", "the body is a JSON list", b"[" + CHAT_BYTES + b"]"),
    bad_raw("json-number", "the body is a JSON number", b"42"),
    bad_raw("json-string", "the body is a JSON string", b'"hello"'),
    bad_raw("invalid-utf8", "bytes that are not UTF-8 inside a string", b'{"model": "fake\xff\xfe"}'),
    bad_raw("nesting-past-parser", "100,000 nested lists (past the JSON parser's limit)", nested(100_000)),
    bad_raw("nesting-in-field", "500 nested lists where a string belongs", nested(500), param="user"),
    bad_raw("number-too-long", "a 5,000-digit integer", b'{"model": "fake", "max_tokens": ' + b"9" * 5000 + b"}"),
    Case("body-10mb", "a 10 MB body (Content-Length declared)", 413, body=chat(user="x" * (10 * 1024 * 1024))),
    bad_raw("body-chunked-over-cap", "3 MiB sent chunked, no Content-Length", b" " * 3 * 2**20, 413, chunked=True),
    bad_raw("content-type-text", "JSON sent as text/plain", CHAT_BYTES, 415, headers={"content-type": "text/plain"}),
    bad_raw("content-type-form", "a form-encoded body", b"model=fake", 415, headers={"content-type": FORM}),
    bad_raw("content-type-missing", "no Content-Type header", CHAT_BYTES, 415, headers={"content-type": ""}),
    # --- fields
    Case("missing-model", "no model", 400, body={"messages": CHAT["messages"]}, param="model"),
    Case("missing-messages", "no messages", 400, body={"model": "fake"}, param="messages"),
    bad_chat("unknown-field", "an unknown top-level field", "bogus", bogus=1),
    bad_message("unknown-message-field", "an unknown field in a message", "messages.0.mood", mood="happy"),
    bad_chat("model-number", "model is a number", "model", model=123),
    bad_chat("model-null", "model is null", "model", model=None),
    bad_chat("model-empty", "model is an empty string", "model", model=""),
    bad_chat("model-too-long", "a 10,000-character model name", "model", model="m" * 10_000),
    bad_chat("model-unknown", "a model that is not served", "model", 404, model="nope"),
    bad_chat("model-embedding-for-chat", "an embedding model asked to chat", "model", model="fake-embed"),
    bad_chat("messages-string", "messages is a string", "messages", messages="hello"),
    bad_chat("messages-null", "messages is null", "messages", messages=None),
    bad_chat("messages-empty", "messages is an empty list", "messages", messages=[]),
    bad_chat("message-string", "a message that is a string", "messages.0", messages=["hello"]),
    bad_message("role-invalid", "an unknown role", "messages.0.role", role="wizard"),
    bad_chat("role-missing", "a message without a role", "messages.0.role", messages=[{"content": "hi"}]),
    bad_message("content-number", "message content is a number", None, content=5),
    bad_message("content-image", "an image content part (text only here)", None, content=[{"type": "image_url"}]),
    bad_message("content-empty", "every message is empty", "messages", content=""),
    bad_chat("messages-too-many", "1,025 messages", "messages", messages=CHAT["messages"] * 1025),
    bad_message("prompt-over-max-model-len", "a prompt longer than the context", "messages", content="w " * 100),
    # --- numbers and sampling options
    bad_chat("max-tokens-negative", "max_tokens -1", "max_tokens", max_tokens=-1),
    bad_chat("max-tokens-zero", "max_tokens 0", "max_tokens", max_tokens=0),
    bad_chat("max-tokens-over-limit", "max_tokens above the model's limit (32)", "max_tokens", max_tokens=33),
    bad_chat("max-tokens-huge", "max_tokens 10^30", "max_tokens", max_tokens=10**30),
    bad_chat("max-tokens-string", "max_tokens as a string", "max_tokens", max_tokens="5"),
    bad_chat("max-tokens-float", "max_tokens 5.5", "max_tokens", max_tokens=5.5),
    bad_chat(
        "max-completion-tokens-negative", "max_completion_tokens -5", "max_completion_tokens", max_completion_tokens=-5
    ),
    bad_chat("n-above-cap", "n above the model's cap (4)", "n", n=99),
    bad_chat("n-zero", "n 0", "n", n=0),
    bad_chat("n-float", "n 2.0 (a float for an integer)", "n", n=2.0),
    bad_chat("n-bool", "n true (a bool for an integer)", "n", n=True),
    bad_chat("n-null", "n null", "n", n=None),
    bad_chat("temperature-high", "temperature 5", "temperature", temperature=5),
    bad_chat("temperature-negative", "temperature -0.1", "temperature", temperature=-0.1),
    bad_chat("temperature-string", "temperature as a string", "temperature", temperature="0.5"),
    bad_raw(
        "temperature-nan", "temperature NaN", json.dumps(chat(temperature=float("nan"))).encode(), param="temperature"
    ),
    bad_chat("top-p-zero", "top_p 0", "top_p", top_p=0),
    bad_chat("top-p-high", "top_p 1.5", "top_p", top_p=1.5),
    bad_chat("seed-negative", "seed -1", "seed", seed=-1),
    bad_chat("seed-huge", "seed 2^64", "seed", seed=2**64),
    bad_chat("presence-penalty-high", "presence_penalty 3", "presence_penalty", presence_penalty=3),
    bad_chat("stream-string", "stream as a string", "stream", stream="yes"),
    bad_chat("stream-options-alone", "stream_options without stream", None, stream_options={"include_usage": True}),
    bad_chat("stop-list-huge", "100 stop sequences", "stop", stop=["x"] * 100),
    bad_chat("stop-too-long", "a 10,000-character stop sequence", "stop", stop="x" * 10_000),
    bad_chat("stop-empty", "an empty stop sequence", "stop", stop=""),
    bad_chat("stop-number", "stop is a number", "stop", stop=5),
    bad_chat("logprobs-true", "logprobs (not supported)", "logprobs", logprobs=True),
    bad_chat("top-logprobs-high", "top_logprobs 50", "top_logprobs", top_logprobs=50),
    bad_chat("top-logprobs-negative", "top_logprobs -1", "top_logprobs", top_logprobs=-1),
    # --- the other routes
    bad_other(COMPLETIONS, "completion-empty-prompt", "an empty prompt", "prompt", COMPLETION | {"prompt": ""}),
    bad_other(COMPLETIONS, "completion-no-prompts", "prompt is an empty list", "prompt", COMPLETION | {"prompt": []}),
    bad_other(
        COMPLETIONS, "completion-two-prompts", "two prompts at once", "prompt", COMPLETION | {"prompt": ["a", "b"]}
    ),
    bad_other(COMPLETIONS, "completion-token-ids", "a prompt of token ids", None, COMPLETION | {"prompt": [1, 2]}),
    bad_other(
        COMPLETIONS, "completion-logprobs-high", "logprobs 10 (at most 5)", "logprobs", COMPLETION | {"logprobs": 10}
    ),
    bad_other(COMPLETIONS, "completion-echo", "echo (not supported)", "echo", COMPLETION | {"echo": True}),
    bad_other(
        COMPLETIONS, "completion-too-long", "a prompt longer than the context", None, COMPLETION | {"prompt": "w " * 99}
    ),
    bad_other(GENERATE, "generate-missing-prompt", "no prompt", "prompt", {"max_new_tokens": 3}),
    bad_other(GENERATE, "generate-empty-prompt", "an empty prompt", "prompt", {"prompt": ""}),
    bad_other(
        GENERATE, "generate-zero-tokens", "max_new_tokens 0", "max_new_tokens", {"prompt": "a", "max_new_tokens": 0}
    ),
    bad_other(
        GENERATE,
        "generate-huge-tokens",
        "max_new_tokens 10^9",
        "max_new_tokens",
        {"prompt": "a", "max_new_tokens": 10**9},
    ),
    bad_other(
        GENERATE, "generate-unknown-model", "a model that is not served", "model", {"prompt": "a", "model": "x"}, 404
    ),
    bad_other(
        GENERATE, "generate-model-too-long", "a 10,000-character model", "model", {"prompt": "a", "model": "m" * 10_000}
    ),
    bad_other(EMBEDDINGS, "embeddings-empty-list", "input is an empty list", "input", EMBED | {"input": []}),
    bad_other(EMBEDDINGS, "embeddings-empty-string", "an empty input string", "input", EMBED | {"input": [""]}),
    bad_other(
        EMBEDDINGS,
        "embeddings-base64",
        "encoding_format base64",
        "encoding_format",
        EMBED | {"encoding_format": "base64"},
    ),
    bad_other(
        EMBEDDINGS, "embeddings-chat-model", "a chat model asked for embeddings", "model", EMBED | {"model": "fake"}
    ),
    bad_other(EMBEDDINGS, "embeddings-too-many", "2,049 inputs", "input", EMBED | {"input": ["a"] * 2049}),
    # --- routes, methods, headers
    Case("method-get-chat", "GET on a POST route", 405, method="GET"),
    Case("method-delete-models", "DELETE /v1/models", 405, method="DELETE", path="/v1/models"),
    Case("method-put-generate", "PUT /generate", 405, body={"prompt": "hi"}, method="PUT", path=GENERATE),
    Case("route-unknown", "an unknown route", 404, body=CHAT, path="/v1/nothing"),
    Case("route-v2", "a route of another API version", 404, body=CHAT, path="/v2/chat/completions"),
    Case("header-many", "1,000 headers", 431, body=CHAT, headers={f"X-H{i}": "v" for i in range(1000)}),
    with_header("header-huge", "a 100 KB header value", 431, "X-Junk", "a" * 100_000),
    with_header("request-id-long", "a 5,000-character X-Request-Id", 400, "X-Request-Id", "a" * 5000, "X-Request-Id"),
    with_header(
        "request-id-control", "control characters in X-Request-Id", 400, "X-Request-Id", "\x01", "X-Request-Id"
    ),
    with_header("request-id-space", "a space in X-Request-Id", 400, "X-Request-Id", "a b", "X-Request-Id"),
    with_header("request-id-non-ascii", "non-ASCII X-Request-Id", 400, "X-Request-Id", "é".encode(), "X-Request-Id"),
    with_header("request-id-empty", "an empty X-Request-Id", 400, "X-Request-Id", "", "X-Request-Id"),
]


def send(client: TestClient, case: Case) -> httpx.Response:
    headers = dict(case.headers)
    kwargs: dict[str, Any] = {}
    if case.content is not None:
        headers = JSON_TYPE | headers
        chunks = [case.content[i : i + 2**20] for i in range(0, len(case.content), 2**20)]
        kwargs["content"] = iter(chunks) if case.chunked else case.content
    elif case.body is not _NO_BODY:
        kwargs["json"] = case.body
    headers = {k: v for k, v in headers.items() if v != "" or k.lower() != "content-type"}
    return client.request(case.method, case.path, headers=headers, **kwargs)


def error_of(resp: httpx.Response) -> dict[str, Any]:
    """The OpenAI error object of a response, or an AssertionError saying why it is not one."""
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    return err


@contextmanager
def in_process_client() -> Iterator[TestClient]:
    """The app as tests/unit/conftest.py builds it; server errors come back as responses."""
    config = AppConfig(
        models=[
            ModelConfig(id="fake", source="/nonexistent/fake", max_tokens_limit=32, default_max_tokens=8, max_n=4),
            ModelConfig(id="fake-embed", source="/nonexistent/embed", task="embed"),
        ]
    )
    engine = FakeEngine(max_model_len=64)
    replicas = {m.id: make_replica(m, engine) for m in config.models}
    service = RouterService(config, LocalReplicaClient(replicas))
    with TestClient(build_fastapi(service), raise_server_exceptions=False) as client:
        yield client
    for replica in replicas.values():
        asyncio.run(replica.__del__())


@pytest.fixture(scope="module")
def app_client() -> Iterator[TestClient]:
    with in_process_client() as client:
        yield client


def test_case_ids_are_unique_and_enough() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_an_openai_error_and_server_stays_healthy(app_client: TestClient, case: Case) -> None:
    resp = send(app_client, case)
    assert resp.status_code == case.status, resp.text[:500]
    err = error_of(resp)
    if case.param is not None:
        assert err["param"] == case.param, err
    if case.status == 405:
        assert "POST" in resp.headers["Allow"] or "GET" in resp.headers["Allow"]
    canary = app_client.post(CHAT_PATH, json=CHAT)
    assert canary.status_code == 200, canary.text
    assert canary.json()["choices"][0]["message"]["content"]


def observe(client: TestClient) -> list[tuple[Case, int, dict[str, Any]]]:
    return [(case, resp.status_code, error_of(resp)) for case in CASES for resp in [send(client, case)]]


def render(observed: list[tuple[Case, int, dict[str, Any]]]) -> str:
    lines = [
        "# Bad inputs and the answers they get",
        "",
        "Generated by `python -m tests.unit.test_bad_inputs` from the case table in",
        "`tests/unit/test_bad_inputs.py` (the unit tests fail when this file is stale). Each row was sent to",
        "the in-process app (router + replica code + a fake engine); every answer is an OpenAI-style body",
        '`{"error": {"message", "type", "param", "code"}}`, and a normal chat request succeeds after each one.',
        "",
        f"{len(observed)} cases.",
        "",
        "| case | request | what is wrong | status | type | code | param |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for case, status, err in observed:
        cells = [case.id, f"{case.method} {case.path}", case.what, str(status), err["type"], err["code"], err["param"]]
        lines.append(
            "| " + " | ".join(f"`{c}`" if c and i in (0, 4, 5, 6) else (c or "") for i, c in enumerate(cells)) + " |"
        )
    return "\n".join(lines) + "\n"


def test_doc_is_up_to_date(app_client: TestClient) -> None:
    assert DOC.exists(), "run: python -m tests.unit.test_bad_inputs"
    assert DOC.read_text() == render(observe(app_client)), "stale; run: python -m tests.unit.test_bad_inputs"


def test_generate_default_max_new_tokens_fits_a_lower_limit(app_client: TestClient) -> None:
    """/generate's default (64) is clamped to the model's limit (32 here); an explicit 64 is refused."""
    resp = app_client.post("/generate", json={"prompt": "hi"})
    assert resp.status_code == 200, resp.text
    explicit = app_client.post("/generate", json={"prompt": "hi", "max_new_tokens": 64})
    assert error_of(explicit)["param"] == "max_new_tokens"


if __name__ == "__main__":
    with in_process_client() as doc_client:
        DOC.write_text(render(observe(doc_client)))
    print(f"wrote {DOC} ({len(CASES)} cases)")
