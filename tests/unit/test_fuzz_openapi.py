"""Schema-driven fuzzing of the router's own HTTP API (schemathesis + Hypothesis, in-process over ASGI).

Requests generated from the app's own OpenAPI schema, valid ones (positive mode) and deliberately
invalid ones (negative mode), go to router + replica code + FakeEngine. None may get a 5xx, and
every 4xx must be an OpenAI-style error body. Responses are not checked against the schema's
response models: it declares FastAPI's 422 body, which the app replaces with OpenAI's 400 error.

The OpenAI routes are vLLM's and relayed by one catch-all route whose schema declares no body
(their bodies are vLLM's to validate; tests/unit/test_bad_inputs.py covers what the router reads
of them), so they are not fuzzed here; the router's own operations are.

Operations are listed here (and checked against the schema) rather than collected by
``schemathesis.pytest``, whose lazy fixture loader does not run on pytest 9.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.unit.test_bad_inputs import in_process_client

EXAMPLES_PER_OPERATION = 30
SERVED_MODELS = ("fake", "fake-embed")
# The in-process app's limit (tests/unit/conftest.py two_models: max_tokens_limit=32).
SERVED_LIMITS = {"max_new_tokens": 32}
OPERATIONS = [
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/v1/models"),
    ("POST", "/generate"),
    ("POST", "/v1/load_lora_adapter"),
    ("POST", "/v1/unload_lora_adapter"),
]
RELAYED = {
    ("POST", "/{path}"),
    *((m, "/{path}") for m in ("GET", "PUT", "DELETE", "PATCH")),
}  # the catch-alls relaying vLLM's routes (module doc)


@pytest.fixture(scope="module")
def api_schema() -> Iterator[Any]:
    with in_process_client() as client:
        yield schemathesis.openapi.from_asgi("/openapi.json", client.app)


def test_every_operation_is_fuzzed(api_schema: Any) -> None:
    in_schema = {(r.ok().method.upper(), r.ok().path) for r in api_schema.get_all_operations()}
    assert in_schema == {*OPERATIONS, *RELAYED}


@st.composite
def cases_reaching_models(draw: st.DrawFn, cases: st.SearchStrategy[Any], mode: GenerationMode) -> Any:
    """Half of the bodies name a served model; valid ones also stay within its token and choice
    limits. So generated requests get past the model lookup into admission, the replica and the
    server instead of nearly all ending as 404s or limit errors."""
    case = draw(cases)
    if isinstance(case.body, dict) and draw(st.booleans()):
        if "model" in case.body:
            case.body["model"] = draw(st.sampled_from(SERVED_MODELS))
        limits = SERVED_LIMITS if mode is GenerationMode.POSITIVE else {}
        for name in limits.keys() & case.body.keys():
            if isinstance(case.body[name], int):
                case.body[name] = draw(st.integers(1, SERVED_LIMITS[name]))
    return case


def assert_openai_error(body: bytes) -> None:
    doc = json.loads(body)
    assert isinstance(doc, dict) and set(doc) == {"error"}, doc
    err = doc["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    assert err["param"] is None or isinstance(err["param"], str), err
    assert err["code"] is None or isinstance(err["code"], str | int), err  # vLLM's own errors: the status


# The GET operations take no parameters: there is nothing to make invalid for negative mode.
FUZZ_RUNS = [
    pytest.param(method, path, mode, id=f"{method} {path} {mode.value}")
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if method == "POST" or mode is GenerationMode.POSITIVE
]


@pytest.mark.parametrize(("method", "path", "mode"), FUZZ_RUNS)
def test_no_server_errors_and_errors_are_openai_shaped(
    api_schema: Any, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]
    statuses: list[int] = []

    @given(case=cases_reaching_models(operation.as_strategy(generation_mode=mode), mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )
    def one_request(case: Any) -> None:
        response = case.call()
        statuses.append(response.status_code)
        assert response.status_code < 500, f"{response.status_code} {response.text[:300]} for body {case.body!r:.300}"
        if response.status_code >= 400:
            assert_openai_error(response.content)

    one_request()
    assert statuses, "no request was generated"
    if mode is GenerationMode.NEGATIVE:
        assert any(400 <= s < 500 for s in statuses), "negative examples should be refused"
