"""Bad inputs the router answers itself, table-driven: every case gets a 4xx OpenAI-style error body,
and a normal chat request still succeeds right after it (router + replica code + FakeEngine
in-process). Parameter validation is vLLM's (its own errors are relayed unchanged, see test_api.py);
the cases here are the router's: the body as a whole, its caps and the model lookup, /generate,
routes, methods and request heads.

The table also writes docs/bad-inputs.md from the answers the app gives:
``python -m tests.unit.test_bad_inputs`` regenerates it, ``test_doc_is_up_to_date`` checks it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from serve_app.engine.fake import FakeEngine
from tests.unit.conftest import app_client as served_app
from tests.unit.conftest import two_models

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
    bad_raw("number-too-long", "a 5,000-digit integer", b'{"model": "fake", "max_tokens": ' + b"9" * 5000 + b"}"),
    Case("body-10mb", "a 10 MB body (Content-Length declared)", 413, body=chat(user="x" * (10 * 1024 * 1024))),
    bad_raw("body-chunked-over-cap", "3 MiB sent chunked, no Content-Length", b" " * 3 * 2**20, 413, chunked=True),
    bad_raw("completion-malformed-json", "truncated JSON", b'{"prompt": ', path=COMPLETIONS),
    bad_other(EMBEDDINGS, "embeddings-json-list", "the body is a JSON list", None, ["a"]),
    # --- the model and the router's caps (vLLM would accept these and run them for long)
    bad_chat("model-unknown", "a model that is not served", "model", 404, model="nope"),
    bad_chat("model-too-long", "a 10,000-character model name", "model", 404, model="m" * 10_000),
    bad_other(
        EMBEDDINGS, "embeddings-model-unknown", "a model that is not served", "model", EMBED | {"model": "x"}, 404
    ),
    bad_chat("max-tokens-over-limit", "max_tokens above the model's limit (32)", "max_tokens", max_tokens=33),
    bad_chat("max-tokens-huge", "max_tokens 10^30", "max_tokens", max_tokens=10**30),
    bad_chat(
        "max-completion-tokens-over-limit",
        "max_completion_tokens above the model's limit",
        "max_completion_tokens",
        max_completion_tokens=33,
    ),
    bad_chat("n-above-cap", "n above the model's cap (4)", "n", n=99),
    bad_chat("n-above-cap-streamed", "n above the cap in a stream", "n", n=5, stream=True),
    bad_other(
        COMPLETIONS, "best-of-above-cap", "best_of above the model's cap (4)", "best_of", COMPLETION | {"best_of": 5}
    ),
    bad_other(
        COMPLETIONS,
        "completion-max-tokens-over",
        "max_tokens above the limit",
        "max_tokens",
        COMPLETION | {"max_tokens": 99},
    ),
    # --- /generate (the router's own API)
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
    bad_other(GENERATE, "generate-unknown-field", "an unknown field", "top_k", {"prompt": "a", "top_k": 3}),
    bad_other(GENERATE, "generate-temperature-high", "temperature 5", "temperature", {"prompt": "a", "temperature": 5}),
    bad_other(GENERATE, "generate-json-list", "the body is a JSON list", None, ["a"]),
    # --- routes, methods, headers
    Case("method-get-chat", "GET on a POST route", 405, method="GET"),
    Case("method-delete-models", "DELETE /v1/models", 405, method="DELETE", path="/v1/models"),
    Case("method-put-generate", "PUT /generate", 405, body={"prompt": "hi"}, method="PUT", path=GENERATE),
    Case("route-unknown", "a route the model server lacks", 404, body=CHAT, path="/v1/nothing"),
    Case("route-v2", "a route of another API version", 404, body=CHAT, path="/v2/chat/completions"),
    Case("route-operator", "an operator route of the model server", 404, body=CHAT, path="/metrics"),
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
    with served_app(two_models(), FakeEngine(max_model_len=64), raise_server_exceptions=False) as client:
        yield client


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
        "These are the router's own answers (and the replica's 404 for routes the model server lacks or",
        "hides); request parameters are validated by vLLM, whose errors the router relays unchanged.",
        "",
        f"{len(observed)} cases.",
        "",
        "| case | request | what is wrong | status | type | code | param |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for case, status, err in observed:
        code = None if err["code"] is None else str(err["code"])  # vLLM's errors carry the status as code
        cells = [case.id, f"{case.method} {case.path}", case.what, str(status), err["type"], code, err["param"]]
        lines.append(
            "| " + " | ".join(f"`{c}`" if c and i in (0, 4, 5, 6) else (c or "") for i, c in enumerate(cells)) + " |"
        )
    return "\n".join(lines) + "\n"


def test_doc_is_up_to_date(app_client: TestClient) -> None:
    assert DOC.exists(), "run: python -m tests.unit.test_bad_inputs"
    assert DOC.read_text() == render(observe(app_client)), "stale; run: python -m tests.unit.test_bad_inputs"


if __name__ == "__main__":
    with in_process_client() as doc_client:
        DOC.write_text(render(observe(doc_client)))
    print(f"wrote {DOC} ({len(CASES)} cases)")
