"""LoRA adapters through the router and replica code in-process (FakeEngine stands in for vLLM's
server: it serves adapters by name and has vLLM's /v1/load_lora_adapter). The same paths run on
the real stack in tests/integration/test_lora.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serve_app.config import AppConfig, ModelConfig, ServerConfig
from serve_app.core.adapters import AdapterDirectory, AdapterRef, reconcile_cards
from serve_app.engine.fake import FakeEngine
from serve_app.observability.backends import InMemoryMetricsBackend
from serve_app.observability.recorder import ServeAppMetrics
from serve_app.replica.adapters import ReplicaAdapters
from serve_app.router.client import LocalReplicaClient
from tests.unit.conftest import app_client, build_app, make_replica
from tests.unit.lora_files import write_adapter


def chat(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4}


def lora_config(static: Path, dynamic: bool = True) -> AppConfig:
    lora = {"adapters": [{"name": "a", "path": str(static)}], "max_lora_rank": 8, "dynamic": dynamic}
    return AppConfig(models=[ModelConfig.model_validate({"id": "fake", "source": "/nonexistent/f", "lora": lora})])


@pytest.fixture
def engine(tmp_path: Path) -> FakeEngine:
    return FakeEngine(max_model_len=64, adapters={"a": str(tmp_path / "a")})  # as --lora-modules loads it


@pytest.fixture
def client(tmp_path: Path, engine: FakeEngine) -> Iterator[TestClient]:
    with app_client(lora_config(write_adapter(tmp_path / "a")), engine) as test_client:
        yield test_client


def answer(client: TestClient, model: str) -> str:
    resp = client.post("/v1/chat/completions", json=chat(model))
    assert resp.status_code == 200, resp.text
    return resp.json()["choices"][0]["message"]["content"]


def error_of(resp, status: int) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["message"]
    return err


def model_cards(client: TestClient) -> dict[str, dict]:
    return {c["id"]: c for c in client.get("/v1/models").json()["data"]}


def test_a_static_adapter_is_served_by_name_and_listed_with_its_parent(client: TestClient) -> None:
    assert answer(client, "a") != answer(client, "fake")
    assert model_cards(client)["a"]["parent"] == "fake"


def test_an_unknown_adapter_is_a_404_with_an_openai_body(client: TestClient) -> None:
    err = error_of(client.post("/v1/chat/completions", json=chat("nope")), 404)
    assert (err["code"], err["param"]) == ("model_not_found", "model")


def test_an_adapter_added_at_run_time_serves_and_a_removed_one_is_a_404(
    client: TestClient, engine: FakeEngine, tmp_path: Path
) -> None:
    path = str(write_adapter(tmp_path / "d"))
    error_of(client.post("/v1/chat/completions", json=chat("d")), 404)
    resp = client.post("/v1/load_lora_adapter", json={"lora_name": "d", "lora_path": path})
    assert (resp.status_code, resp.text) == (200, "Success: LoRA adapter 'd' added successfully.")
    assert engine.adapters["d"] == path
    assert answer(client, "d") not in (answer(client, "fake"), answer(client, "a"))
    assert model_cards(client)["d"]["parent"] == "fake"
    error_of(client.post("/v1/load_lora_adapter", json={"lora_name": "d", "lora_path": path}), 400)
    resp = client.post("/v1/unload_lora_adapter", json={"lora_name": "d"})
    assert resp.status_code == 200
    error_of(client.post("/v1/chat/completions", json=chat("d")), 404)
    assert "d" not in model_cards(client)  # the replica's vLLM still holds it; the router lists what it serves
    error_of(client.post("/v1/unload_lora_adapter", json={"lora_name": "d"}), 404)
    error_of(client.post("/v1/unload_lora_adapter", json={"lora_name": "a"}), 400)  # static: a redeploy removes it


def test_a_replica_without_the_adapter_loads_it_from_the_path_the_request_carries(
    engine: FakeEngine, tmp_path: Path
) -> None:
    config = lora_config(write_adapter(tmp_path / "a"))
    replica = make_replica(config.models[0], engine)
    path = str(write_adapter(tmp_path / "d"))
    with TestClient(build_app(config, LocalReplicaClient({"fake": replica}))) as client:
        assert client.post("/v1/load_lora_adapter", json={"lora_name": "d", "lora_path": path}).status_code == 200
        first = answer(client, "d")
        # As if another replica, which never loaded it, got the next request.
        engine.adapters.pop("d")
        replica.adapters.loaded.clear()
        assert answer(client, "d") == first
        assert engine.adapters["d"] == path and replica.adapters.held() == ["a", "d"]
    asyncio.run(replica.__del__())


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"lora_name": "x", "lora_path": "/nonexistent/x"}, 400, "is not a folder"),
        ({"lora_name": "fake", "lora_path": "/p"}, 400, "conflicts with a served base model"),
        ({"lora_name": "a", "lora_path": "/p"}, 400, "has already been loaded"),
        ({"lora_name": "x"}, 400, "missing required parameter: 'lora_path'"),
        ({"lora_name": 3, "lora_path": "/p"}, 400, "lora_name"),
        ({"lora_name": "x", "lora_path": "/p", "load_inplace": True}, 400, "unknown parameter: 'load_inplace'"),
        ({"lora_name": "x", "lora_path": "/p", "model": "other"}, 404, "does not exist"),
    ],
)
def test_bad_loads_get_a_clear_4xx_and_change_nothing(client: TestClient, body: dict, status: int, words: str) -> None:
    err = error_of(client.post("/v1/load_lora_adapter", json=body), status)
    assert words in err["message"]
    error_of(client.post("/v1/chat/completions", json=chat("x")), 404)
    assert answer(client, "a")  # the replica and its adapters go on serving


def test_a_rank_above_max_lora_rank_is_refused_by_the_replica(client: TestClient, tmp_path: Path) -> None:
    big = str(write_adapter(tmp_path / "big", rank=16))
    err = error_of(client.post("/v1/load_lora_adapter", json={"lora_name": "big", "lora_path": big}), 400)
    assert "has rank 16, above max_lora_rank 8" in err["message"]
    error_of(client.post("/v1/chat/completions", json=chat("big")), 404)


def test_loading_needs_lora_dynamic(tmp_path: Path, engine: FakeEngine) -> None:
    with app_client(lora_config(write_adapter(tmp_path / "a"), dynamic=False), engine) as client:
        body = {"lora_name": "d", "lora_path": str(write_adapter(tmp_path / "d"))}
        assert "lora.dynamic" in error_of(client.post("/v1/load_lora_adapter", json=body), 400)["message"]


def test_the_directory_is_bounded_per_model(tmp_path: Path) -> None:
    model = ModelConfig.model_validate({"id": "m", "lora": {"dynamic": True, "max_dynamic_adapters": 2}})
    directory = AdapterDirectory([model])
    for name in ("x", "y"):
        assert directory.refuse_load(name, "/p", "m") is None
        directory.replace_dynamic([*directory.all_dynamic(), AdapterRef(name, "m", "/p")])
    refusal = directory.refuse_load("z", "/p", "m")
    assert refusal is not None and refusal.code == "adapter_limit"
    directory.replace_dynamic([AdapterRef("y", "m", "/p")])  # the catalog's state after x's unload
    assert directory.refuse_load("z", "/p", "m") is None


def test_cards_list_exactly_the_adapters_served() -> None:
    lora = {"dynamic": True, "adapters": [{"name": "s", "path": "/s"}]}
    model = ModelConfig.model_validate({"id": "m", "lora": lora})
    directory = AdapterDirectory([model])
    directory.replace_dynamic([AdapterRef("new", "m", "/new")])
    cards = [{"id": "m"}, {"id": "s", "parent": "m"}, {"id": "removed", "parent": "m"}]
    reconciled = reconcile_cards(cards, "m", directory)
    assert [(c["id"], c.get("parent"), c.get("root")) for c in reconciled] == [
        ("m", None, None),
        ("s", "m", None),
        ("new", "m", "/new"),
    ]


def test_adapter_metrics_count_only_adapters_the_app_serves(tmp_path: Path, engine: FakeEngine) -> None:
    store = InMemoryMetricsBackend()
    with app_client(lora_config(write_adapter(tmp_path / "a")), engine, ServeAppMetrics(store)) as client:
        answer(client, "a")
        answer(client, "fake")
        error_of(client.post("/v1/chat/completions", json=chat("made-up")), 404)
    assert store.counter("serve_app_adapter_requests", model="fake", adapter="a") == 1
    assert store.counter("serve_app_adapter_completion_tokens", model="fake", adapter="a") == 4
    counted = {dict(tags).get("adapter") for name, tags in store.counters if name.startswith("serve_app_adapter")}
    assert counted == {"a"}


async def test_a_replica_counts_adapter_loads_refusals_and_evictions(tmp_path: Path, engine: FakeEngine) -> None:
    store = InMemoryMetricsBackend()
    model = lora_config(write_adapter(tmp_path / "a")).models[0]
    adapters = ReplicaAdapters(model, tmp_path / "base", engine.app, ServeAppMetrics(store))
    assert (await adapters.load("d", str(write_adapter(tmp_path / "d"))))[0] == 200
    assert (await adapters.load("x", str(tmp_path / "missing")))[0] == 400
    adapters.note_cached(["a", "d"])
    adapters.note_cached(["d"])
    loads = {a: store.counter("serve_app_adapter_loads", model="fake", adapter=a) for a in ("a", "d")}
    assert loads == {"a": 1, "d": 1}  # "a" at start (vLLM's --lora-modules), "d" at run time
    assert store.counter("serve_app_adapter_load_failures", model="fake") == 1
    assert store.counter("serve_app_adapter_evictions", model="fake", adapter="a") == 1


def test_adding_and_removing_adapters_needs_an_api_key_where_keys_are_configured(
    tmp_path: Path, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVE_APP_TEST_LORA_KEYS", "sk-lora-test-key-0123456789")
    config = lora_config(write_adapter(tmp_path / "a"))
    config = config.model_copy(update={"server": ServerConfig(api_keys_env="SERVE_APP_TEST_LORA_KEYS")})
    load = {"lora_name": "d", "lora_path": str(write_adapter(tmp_path / "d"))}
    with app_client(config, engine) as client:
        assert error_of(client.post("/v1/load_lora_adapter", json=load), 401)["code"] == "missing_api_key"
        assert error_of(client.post("/v1/unload_lora_adapter", json={"lora_name": "d"}), 401)
        key = {"Authorization": "Bearer sk-lora-test-key-0123456789"}
        assert client.post("/v1/load_lora_adapter", json=load, headers=key).status_code == 200
        assert client.post("/v1/unload_lora_adapter", json={"lora_name": "d"}, headers=key).status_code == 200
