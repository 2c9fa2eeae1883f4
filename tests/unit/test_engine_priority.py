"""vLLM's priority from the request's class: the pure rule (serve_app.core.engine_priority) and the
router writing it into what it sends the replica, only for a model on ``scheduling_policy: priority``."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import httpx
import pytest

from serve_app.config import AppConfig, ModelConfig
from serve_app.config_tenants import FlowControlConfig
from serve_app.core.engine_priority import engine_priority, stamp_priority, uses_priority_scheduling
from serve_app.engine.fake import FakeEngine
from serve_app.replica.contract import Event, RelayRequest
from serve_app.router.client import LocalReplicaClient
from tests.unit.conftest import build_app, make_replica_async
from tests.unit.test_flow_control import KEYS, bearer, digest

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5}


def test_only_the_priority_policy_counts() -> None:
    assert uses_priority_scheduling({"scheduling_policy": "priority"})
    assert not uses_priority_scheduling({"scheduling_policy": "fcfs"})
    assert not uses_priority_scheduling({})


def test_interactive_before_batch_and_no_class_is_interactive() -> None:
    assert engine_priority(0) < engine_priority(1)
    assert engine_priority(None) == engine_priority(0)


def test_the_router_value_replaces_the_clients_on_generation_paths_only() -> None:
    assert stamp_priority({"prompt": "x"}, "/v1/completions", 1) == {"prompt": "x", "priority": 1}
    assert stamp_priority({"priority": -100}, "/v1/chat/completions", 1) == {"priority": 1}
    assert stamp_priority({"priority": 7}, "/v1/responses", 0) == {"priority": 0}
    assert stamp_priority({"priority": True}, "/v1/embeddings", 1) == {"priority": 1}
    assert stamp_priority({"priority": 1}, "/v1/completions", 1) is None, "already the router's value"
    assert stamp_priority({"priority": -5}, "/tokenize", 1) is None, "not a request vLLM schedules"


class RecordingClient(LocalReplicaClient):
    """In-process replicas that also keep every body the router sent them."""

    def __init__(self, replicas: dict[str, Any]) -> None:
        super().__init__(replicas)
        self.bodies: list[dict[str, Any]] = []

    async def stream(self, model: str, requests: list[RelayRequest]) -> AsyncGenerator[list[Event], None]:
        self.bodies += [json.loads(r.body) for r in requests]
        async for events in super().stream(model, requests):
            yield events


def config(policy: str | None) -> AppConfig:
    options = {"scheduling_policy": policy} if policy else {}
    model = ModelConfig(
        id="fake", source="/nonexistent/fake", max_tokens_limit=32, default_max_tokens=8, engine_options=options
    )
    tenants = [
        {"name": "a", "api_key_sha256": [digest(KEYS["a"])], "priority": "batch"},
        {"name": "b", "api_key_sha256": [digest(KEYS["b"])]},
    ]
    return AppConfig(models=[model], flow_control=FlowControlConfig.model_validate({"tenants": tenants}))


async def sent_bodies(policy: str | None) -> list[dict[str, Any]]:
    app_config = config(policy)
    client = RecordingClient({"fake": await make_replica_async(app_config.models[0], FakeEngine(max_model_len=64))})
    app = build_app(app_config, client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        requests: list[tuple[dict[str, Any], dict[str, str]]] = [
            (CHAT | {"priority": -100}, bearer("a")),  # batch asking for the head of the queue
            (CHAT, bearer("b")),
            (CHAT | {"priority": 5}, bearer("b", **{"x-priority": "batch"})),  # lowered by the header
        ]
        for body, headers in requests:
            assert (await http.post("/v1/chat/completions", json=body, headers=headers)).status_code == 200
        generate = await http.post("/generate", json={"prompt": "hi", "max_new_tokens": 2}, headers=bearer("a"))
        assert generate.status_code == 200
    return client.bodies


@pytest.mark.usefixtures("stop_replicas")
async def test_on_a_priority_engine_the_class_sets_the_priority() -> None:
    priorities = [body.get("priority") for body in await sent_bodies("priority")]
    assert priorities == [1, 0, 1, 1]


@pytest.mark.usefixtures("stop_replicas")
@pytest.mark.parametrize("policy", [None, "fcfs"])
async def test_on_a_fcfs_engine_bodies_go_unchanged(policy: str | None) -> None:
    priorities = [body.get("priority") for body in await sent_bodies(policy)]
    assert priorities == [-100, None, 5, None]
