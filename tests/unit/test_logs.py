"""Structured request logs: the formatter, the request-id context, and one line per request at the
router and one at the replica (in-process app on the FakeEngine)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from fastapi.testclient import TestClient

from serve_app.config import AppConfig, ModelConfig, ServerConfig
from serve_app.core.request_id import request_context
from serve_app.engine.fake import FakeEngine
from serve_app.observability.logs import (
    LOGGER_NAME,
    JsonLineFormatter,
    ReplicaRequestLog,
    RequestIdFilter,
    RequestLog,
    clip_text,
    install_json_logging,
)
from tests.unit.conftest import app_client

PROMPT = "tell me a secret about zebras"
CHAT = {"model": "fake", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 5}


def record(msg: str = "hello", **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("serve_app.test", logging.INFO, __file__, 1, msg, (), None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_a_line_is_one_json_object_with_the_standard_fields() -> None:
    line = JsonLineFormatter().format(record("a\nb", request_id="r1", status=200, latency_ms=1.5))
    assert "\n" not in line
    entry = json.loads(line)
    assert list(entry)[:4] == ["timestamp", "level", "logger", "message"]
    assert entry["timestamp"].endswith("+00:00") and entry["level"] == "INFO" and entry["logger"] == "serve_app.test"
    assert (entry["message"], entry["request_id"], entry["status"], entry["latency_ms"]) == ("a\nb", "r1", 200, 1.5)


def test_only_allow_listed_attributes_are_written() -> None:
    entry = json.loads(JsonLineFormatter().format(record(request_id="r1", api_key="sk-123", body={"x": 1})))
    assert "api_key" not in entry and "body" not in entry
    assert "sk-123" not in json.dumps(entry)


def test_exceptions_stay_inside_the_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.LogRecord("serve_app.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    entry = json.loads(JsonLineFormatter().format(rec))
    assert "ValueError: boom" in entry["exception"]


def test_the_filter_stamps_the_request_id_of_the_context_and_explicit_ids_win() -> None:
    id_filter = RequestIdFilter()
    outside = record()
    id_filter.filter(outside)
    assert not hasattr(outside, "request_id")
    with request_context("ctx-1"):
        inside, explicit = record(), record(request_id="explicit")
        id_filter.filter(inside)
        id_filter.filter(explicit)
    assert (inside.request_id, explicit.request_id) == ("ctx-1", "explicit")


async def test_tasks_started_in_a_request_context_inherit_its_id() -> None:
    id_filter = RequestIdFilter()

    async def log_later() -> logging.LogRecord:
        await asyncio.sleep(0)
        rec = record()
        id_filter.filter(rec)
        return rec

    with request_context("task-parent"):
        task = asyncio.create_task(log_later())
    assert (await task).request_id == "task-parent"


def test_a_replica_line_is_a_warning_when_the_request_failed() -> None:
    answered = ReplicaRequestLog("r1", "/v1/completions", "m", "replica-1", started=10.0, status=200)
    answered.completion_tokens, answered.finish_reason = 4, "stop"
    fields = answered.fields(now=10.25)
    assert fields["latency_ms"] == 250.0 and fields["replica"] == "replica-1" and fields["error"] is None
    records: list[logging.LogRecord] = []
    logger = logging.getLogger("serve_app.test_replica_lines")
    logger.addHandler(handler := logging.Handler())
    handler.emit = records.append  # type: ignore[method-assign]
    logger.setLevel(logging.DEBUG)
    answered.write(logger, 11.0)
    ReplicaRequestLog("r2", "/v1/completions", "m", "replica-1", 10.0, status=500).write(logger, 11.0)
    ReplicaRequestLog("r3", "/v1/completions", "m", "replica-1", 10.0, error="engine failed").write(logger, 11.0)
    logger.removeHandler(handler)
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (logging.INFO, "request answered"),
        (logging.WARNING, "request answered"),
        (logging.WARNING, "request failed"),
    ]


def test_text_is_recorded_only_with_the_flag_and_clipped() -> None:
    quiet = RequestLog("r", "POST")
    quiet.note_prompt(PROMPT)
    quiet.note_choices(3, [2], ["stop"], ["zebra facts"])
    fields = quiet.fields("/v1/completions", 200, 0.25)
    assert "prompt" not in fields and "completion" not in fields and PROMPT not in json.dumps(fields)
    assert (fields["prompt_tokens"], fields["completion_tokens"], fields["finish_reason"]) == (3, 2, "stop")
    assert fields["latency_ms"] == 250.0

    loud = RequestLog("r", "POST", include_text=True)
    loud.note_prompt([{"role": "user", "content": "x" * 20_000}])
    loud.note_choices(3, [2, 4], ["stop", None], ["a", "b"])
    fields = loud.fields("/v1/completions", 200, 0.1)
    assert fields["completion"] == ["a", "b"] and fields["finish_reason"] == "stop,none"
    assert fields["completion_tokens"] == 6
    assert fields["prompt"][0]["content"].endswith("...[3616 more characters]")
    assert clip_text("short", 10) == "short"


# -- the app in-process -----------------------------------------------------------------------


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """install_json_logging as the deployments call it, writing to a buffer; undone afterwards."""
    logger = logging.getLogger(LOGGER_NAME)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    stream = io.StringIO()
    install_json_logging(stream)
    yield stream
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


@pytest.fixture
def serve(fake_engine: FakeEngine) -> Iterator[Callable[[AppConfig], TestClient]]:
    with ExitStack() as opened:
        yield lambda config: opened.enter_context(app_client(config, fake_engine))


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_request_logs_one_router_line_and_one_replica_line_with_its_id(
    serve: Callable[[AppConfig], TestClient], app_config: AppConfig, log_stream: io.StringIO
) -> None:
    client = serve(app_config)
    resp = client.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "client-id-42"})
    assert resp.status_code == 200
    entries = [e for e in lines(log_stream) if e.get("request_id") == "client-id-42"]
    (router,) = [e for e in entries if e["logger"] == "serve_app.requests"]
    (replica,) = [e for e in entries if e["logger"] == "serve_app.replica"]  # "model ready" has no id
    assert router["message"] == "POST /v1/chat/completions 200"
    expected = {"route": "/v1/chat/completions", "model": "fake", "status": 200, "finish_reason": "length"}
    assert expected.items() <= router.items()
    assert (router["prompt_tokens"], router["completion_tokens"]) == (resp.json()["usage"]["prompt_tokens"], 5)
    assert router["latency_ms"] >= 0 and router["level"] == "INFO"
    expected = {"route": "/v1/chat/completions", "model": "fake", "replica": "local", "status": 200}
    assert expected.items() <= replica.items()
    assert (replica["message"], replica["completion_tokens"], replica["finish_reason"]) == (
        "request answered",
        5,
        "length",
    )
    assert PROMPT not in log_stream.getvalue()
    assert resp.json()["choices"][0]["message"]["content"] not in log_stream.getvalue()


def test_a_stream_is_logged_when_it_ends_with_the_tokens_the_router_asked_usage_for(
    serve: Callable[[AppConfig], TestClient], app_config: AppConfig, log_stream: io.StringIO
) -> None:
    client = serve(app_config)
    resp = client.post("/v1/chat/completions", json=CHAT | {"stream": True}, headers={"X-Request-Id": "stream-1"})
    assert resp.status_code == 200 and '"usage"' not in resp.text  # the client did not ask for it
    (router,) = [e for e in lines(log_stream) if e["logger"] == "serve_app.requests"]
    assert (router["request_id"], router["completion_tokens"], router["finish_reason"]) == ("stream-1", 5, "length")
    assert router["prompt_tokens"] == len(PROMPT.split())


def test_probes_log_only_at_debug(
    serve: Callable[[AppConfig], TestClient], app_config: AppConfig, log_stream: io.StringIO
) -> None:
    client = serve(app_config)
    assert client.get("/health").status_code == 200 and client.get("/ready").status_code == 200
    assert [e for e in lines(log_stream) if e["logger"] == "serve_app.requests"] == []
    logging.getLogger(LOGGER_NAME).setLevel(logging.DEBUG)
    client.get("/health")
    (probe,) = [e for e in lines(log_stream) if e["logger"] == "serve_app.requests"]
    assert (probe["level"], probe["route"], probe["status"]) == ("DEBUG", "/health", 200)


def test_without_a_client_id_the_line_carries_the_id_of_the_response_header(
    serve: Callable[[AppConfig], TestClient], app_config: AppConfig, log_stream: io.StringIO
) -> None:
    client = serve(app_config)
    resp = client.post("/v1/chat/completions", json=CHAT | {"model": "nope"})
    assert resp.status_code == 404
    (router,) = [e for e in lines(log_stream) if e["logger"] == "serve_app.requests"]
    assert router["request_id"] == resp.headers["X-Request-Id"]
    assert (router["status"], "model" in router) == (404, False)


def test_paths_outside_the_known_routes_share_one_route_label(
    serve: Callable[[AppConfig], TestClient], app_config: AppConfig, log_stream: io.StringIO
) -> None:
    client = serve(app_config)
    for path in ("/v1/nothing", "/v1/a-path-made-up-by-a-client"):
        assert client.post(path, json=CHAT).status_code == 404
    routes = [e["route"] for e in lines(log_stream) if e["logger"] == "serve_app.requests"]
    assert routes == ["/{path:path}"] * 2, "a client must not create a label per path"


def test_prompts_are_logged_only_with_log_prompts_and_never_on_the_replica(
    serve: Callable[[AppConfig], TestClient], app_config: AppConfig, log_stream: io.StringIO
) -> None:
    loud = app_config.model_copy(update={"server": ServerConfig(log_prompts=True)})
    client = serve(loud)
    resp = client.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "loud-1"})
    assert resp.status_code == 200
    (router,) = [e for e in lines(log_stream) if e["logger"] == "serve_app.requests"]
    assert router["prompt"] == [{"role": "user", "content": PROMPT}]
    (replica,) = [e for e in lines(log_stream) if e.get("request_id") == "loud-1" and "replica" in e]
    assert "prompt" not in replica and PROMPT not in json.dumps(replica)


def test_a_request_the_server_fails_is_a_warning_on_both_sides(
    serve: Callable[[AppConfig], TestClient], log_stream: io.StringIO, fake_engine: FakeEngine
) -> None:
    fake_engine.fail_on = "secret"
    client = serve(AppConfig(models=[ModelConfig(id="fake", source="/x")]))
    resp = client.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "bad-1"})
    assert resp.status_code == 500
    entries = {e["logger"]: e for e in lines(log_stream) if e.get("request_id") == "bad-1"}
    assert {e["level"] for e in entries.values()} == {"WARNING"}
    assert entries["serve_app.replica"]["status"] == 500 and entries["serve_app.requests"]["status"] == 500
