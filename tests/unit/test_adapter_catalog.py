"""Adapters added at run time through several router replicas of one app: they share the app's
catalog (serve_app.core.adapter_catalog; a LocalCatalog here, the Ray actor on the real stack),
each router replica over its own copy, stale by at most VIEW_MAX_AGE_S for an unload
(serve_app.router.adapter_view). The router replicas are the real HTTP app over one in-process
replica (FakeEngine stands in for vLLM), on the virtual-time loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
import pytest

from serve_app.config import AppConfig, ModelConfig
from serve_app.core.adapter_catalog import AdapterCatalog, CatalogState, Placement
from serve_app.core.adapters import AdapterDirectory, AdapterRef
from serve_app.engine.fake import FakeEngine
from serve_app.replica.deployment import LLMReplica
from serve_app.router import adapter_catalog
from serve_app.router.adapter_catalog import LocalCatalog, app_catalog
from serve_app.router.adapter_view import VIEW_MAX_AGE_S
from serve_app.router.client import LocalReplicaClient
from tests.unit.conftest import build_app, make_replica_async
from tests.unit.lora_files import write_adapter
from tests.unit.virtual_time import advance

pytestmark = pytest.mark.usefixtures("stop_replicas")


def chat(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


ACTOR_CALL_S = 0.002  # a read takes a round trip to the actor (virtual time: no real wait)


class CountingCatalog(LocalCatalog):
    """The in-process catalog, counting reads, each taking an actor call's round trip; ``down``
    makes every call fail as an unreachable actor."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.down = False

    async def read(self, epoch: str | None, version: int) -> CatalogState | None:
        self.reads += 1
        await asyncio.sleep(ACTOR_CALL_S)
        if self.down:
            raise ConnectionError("the catalog actor is restarting")
        return await super().read(epoch, version)

    async def add(
        self, adapter: AdapterRef, per_model_limit: int, placement: Placement | None = None
    ) -> tuple[str | None, CatalogState]:
        if self.down:
            raise ConnectionError("the catalog actor is restarting")
        return await super().add(adapter, per_model_limit, placement)


class App:
    """One replica of the model and the app's catalog; ``router()`` starts one more router replica."""

    def __init__(self, tmp_path: Path, replica: LLMReplica, config: AppConfig) -> None:
        self.config = config
        self.replica = replica
        self.catalog = CountingCatalog()
        self.load = {"lora_name": "d", "lora_path": str(write_adapter(tmp_path / "d"))}
        self._stack = AsyncExitStack()

    async def router(self) -> httpx.AsyncClient:
        app = build_app(self.config, LocalReplicaClient({"fake": self.replica}), adapter_catalog=self.catalog)
        transport = httpx.ASGITransport(app=app)
        return await self._stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url="http://r"))

    async def close(self) -> None:
        await self._stack.aclose()


@asynccontextmanager
async def an_app(tmp_path: Path, max_dynamic_adapters: int = 8) -> AsyncIterator[App]:
    lora = {"adapters": [{"name": "a", "path": str(write_adapter(tmp_path / "a"))}], "dynamic": True}
    lora["max_dynamic_adapters"] = max_dynamic_adapters
    model = ModelConfig.model_validate({"id": "fake", "source": "/nonexistent/f", "lora": lora})
    config = AppConfig.model_validate({"models": [model.model_dump()], "router": {"num_replicas": 2}})
    engine = FakeEngine(max_model_len=64, adapters={"a": str(tmp_path / "a")})
    app = App(tmp_path, await make_replica_async(config.models[0], engine), config)
    try:
        yield app
    finally:
        await app.close()


async def status(router: httpx.AsyncClient, model: str) -> int:
    return (await router.post("/v1/chat/completions", json=chat(model))).status_code


async def test_an_adapter_loaded_through_one_router_replica_serves_through_another(tmp_path: Path) -> None:
    async with an_app(tmp_path) as app:
        first, second = await app.router(), await app.router()
        assert await status(second, "d") == 404  # unknown yet; the second router's copy is fresh now
        assert (await first.post("/v1/load_lora_adapter", json=app.load)).status_code == 200
        assert await status(second, "d") == 200  # at once: a name it does not know reads the catalog
        cards = {c["id"]: c for c in (await second.get("/v1/models")).json()["data"]}
        assert cards["d"]["parent"] == "fake" and cards["d"]["root"] == app.load["lora_path"]
        again = await second.post("/v1/load_lora_adapter", json=app.load | {"lora_path": "/elsewhere"})
        assert again.status_code == 400 and again.json()["error"]["code"] == "name_taken"


async def test_an_unload_through_one_router_replica_is_a_404_through_another_within_the_bound(tmp_path: Path) -> None:
    async with an_app(tmp_path) as app:
        first, second = await app.router(), await app.router()
        assert (await first.post("/v1/load_lora_adapter", json=app.load)).status_code == 200
        assert await status(first, "d") == await status(second, "d") == 200
        assert (await second.post("/v1/unload_lora_adapter", json={"lora_name": "d"})).status_code == 200
        assert await status(second, "d") == 404  # where it was unloaded: at once
        assert await status(first, "d") == 200  # the first router's copy is younger than the bound
        await advance(VIEW_MAX_AGE_S)
        assert await status(first, "d") == 404  # once it is not
        cards = {c["id"] for c in (await first.get("/v1/models")).json()["data"]}
        assert cards == {"fake", "a"}
        gone = await first.post("/v1/unload_lora_adapter", json={"lora_name": "d"})
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"


async def test_a_router_replica_started_later_serves_the_adapters_added_before(tmp_path: Path) -> None:
    async with an_app(tmp_path) as app:
        first = await app.router()
        assert (await first.post("/v1/load_lora_adapter", json=app.load)).status_code == 200
        restarted = await app.router()  # a new router replica, or one Ray restarted: an empty copy
        cards = {c["id"]: c.get("parent") for c in (await restarted.get("/v1/models")).json()["data"]}
        assert cards == {"fake": None, "a": "fake", "d": "fake"}
        assert await status(restarted, "d") == 200


async def test_the_catalog_bounds_adapters_per_model_across_router_replicas(tmp_path: Path) -> None:
    async with an_app(tmp_path, max_dynamic_adapters=1) as app:
        first, second = await app.router(), await app.router()
        assert (await first.post("/v1/load_lora_adapter", json=app.load)).status_code == 200
        other = {"lora_name": "e", "lora_path": str(write_adapter(tmp_path / "e"))}
        refused = await second.post("/v1/load_lora_adapter", json=other)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "adapter_limit"
        assert await status(second, "e") == 404


async def test_copies_read_the_catalog_once_per_bound_and_once_per_burst_of_unknown_names(tmp_path: Path) -> None:
    async with an_app(tmp_path) as app:
        router = await app.router()
        assert (await router.post("/v1/load_lora_adapter", json=app.load)).status_code == 200
        reads = app.catalog.reads  # the load read it first: the copy is fresh
        assert [await status(router, "d") for _ in range(5)] == [200] * 5
        assert app.catalog.reads == reads
        await advance(VIEW_MAX_AGE_S)
        assert [await status(router, "d") for _ in range(5)] == [200] * 5
        assert app.catalog.reads == reads + 1  # the first found the copy at its bound; the rest a fresh one
        await advance(VIEW_MAX_AGE_S)
        assert await asyncio.gather(*(status(router, "d") for _ in range(10))) == [200] * 10
        assert app.catalog.reads == reads + 2  # all at once past the bound: one read for them all
        assert [await status(router, "a") for _ in range(3)] == [200] * 3  # static: never read
        assert [await status(router, "fake") for _ in range(3)] == [200] * 3
        assert app.catalog.reads == reads + 2
        burst = await asyncio.gather(*(status(router, f"made-up-{i}") for i in range(20)))
        # One read already under way when they arrived (it may miss a load made meanwhile), one after.
        assert burst == [404] * 20 and app.catalog.reads == reads + 4


async def test_without_the_catalog_known_adapters_serve_and_unknown_names_are_a_503(tmp_path: Path) -> None:
    async with an_app(tmp_path) as app:
        router = await app.router()
        assert (await router.post("/v1/load_lora_adapter", json=app.load)).status_code == 200
        assert await status(router, "d") == 200
        app.catalog.down = True
        await advance(VIEW_MAX_AGE_S)
        assert await status(router, "d") == 200  # its copy, past the bound (logged)
        unknown = await router.post("/v1/chat/completions", json=chat("made-up"))
        assert unknown.status_code == 503 and unknown.headers["retry-after"] == "1"  # it may exist: not a 404
        other = {"lora_name": "e", "lora_path": str(write_adapter(tmp_path / "e"))}
        assert (await router.post("/v1/load_lora_adapter", json=other)).status_code == 503
        assert await status(router, "a") == await status(router, "fake") == 200
        app.catalog.down = False
        assert await status(router, "made-up") == 404


async def test_a_catalog_restarted_empty_is_restored_from_a_router_replicas_copy(tmp_path: Path) -> None:
    async with an_app(tmp_path) as app:
        first, second = await app.router(), await app.router()
        assert (await first.post("/v1/load_lora_adapter", json=app.load)).status_code == 200
        assert await status(first, "d") == 200
        app.catalog.catalog = AdapterCatalog()  # Ray restarted the actor: a new epoch, empty
        await advance(VIEW_MAX_AGE_S)
        assert await status(first, "d") == 200  # it reads the new epoch and seeds it with its copy
        assert await status(second, "d") == 200  # which the others then read
        assert [a.name for a in app.catalog.catalog.state().adapters] == ["d"]


def test_the_catalog_versions_every_change_and_answers_a_reader_that_is_current_with_nothing() -> None:
    catalog = AdapterCatalog("e1")
    d = AdapterRef("d", "m", "/d")
    assert catalog.add(d, 2) == (None, CatalogState("e1", 1, (d,)))
    assert catalog.add(d, 2)[1].version == 1  # the same adapter again: no change, no error
    assert catalog.add(AdapterRef("d", "m", "/other"), 2)[0] == "taken"
    assert catalog.add(AdapterRef("e", "m", "/e"), 2)[0] is None
    assert catalog.add(AdapterRef("f", "m", "/f"), 2)[0] == "limit"
    assert catalog.add(AdapterRef("f", "n", "/f"), 2)[0] is None  # the limit is per base model
    assert catalog.read("e1", 3) is None and catalog.read("e0", 3) is not None
    assert catalog.remove("e") == (True, catalog.state()) and catalog.version == 4
    assert catalog.remove("e")[0] is False and catalog.version == 4
    assert catalog.seed((AdapterRef("x", "m", "/x"),)).version == 4  # written in this epoch: not seeded
    fresh = AdapterCatalog("e2")
    assert fresh.seed((d,)) == CatalogState("e2", 1, (d,))


@pytest.mark.parametrize(("dynamic", "opened"), [(True, ["app"]), (False, [])])
def test_the_app_catalog_is_opened_where_the_directory_says_adapters_come_at_run_time(
    monkeypatch: pytest.MonkeyPatch, dynamic: bool, opened: list[str]
) -> None:
    """The router deployment asks the directory (AdapterDirectory.takes_dynamic), not the config."""
    names: list[str] = []
    monkeypatch.setattr(adapter_catalog, "ray_catalog", lambda name: names.append(name) or LocalCatalog())
    models = [ModelConfig.model_validate({"id": "m", "source": "/nonexistent/m", "lora": {"dynamic": dynamic}})]
    directory = AdapterDirectory([*models, ModelConfig(id="plain", source="/nonexistent/p")])
    assert directory.takes_dynamic is dynamic
    assert isinstance(app_catalog(directory, "app"), LocalCatalog) is dynamic and names == opened
