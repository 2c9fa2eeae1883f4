"""Where a run-time adapter's load went, shared by every router replica through the app's catalog
(``serve_app.core.adapter_catalog.Placement``): the catalog stores it with the adapter, a router
replica's copy hands it to the requests naming the adapter while it steers, and every router
replica's replica choice (``RoutingCore``) counts that replica as holding the adapter before the
replica's own polled stats say so."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.config import AppConfig
from serve_app.core.adapter_catalog import PLACEMENT_KEEP_S, AdapterCatalog, Placement
from serve_app.core.adapters import AdapterDirectory, AdapterRef
from serve_app.core.replica_choice import RoutingCore, recorded_replica
from serve_app.replica.contract import LOADED_ON_HEADER, RelayRequest
from serve_app.router.adapter_catalog import LocalCatalog
from serve_app.router.adapter_routes import load_request
from serve_app.router.adapter_view import AdapterView
from tests.unit.test_adapter_catalog import an_app, chat

pytestmark = pytest.mark.usefixtures("stop_replicas")

IDS = ["replica-0", "replica-1"]
X = "adapter-x"


def naming(adapter: str, recorded_on: str = "") -> RelayRequest:
    """A chat request naming a run-time adapter, as the ingress builds it from its catalog copy."""
    return RelayRequest(
        "id", "/v1/chat/completions", b"{}", adapter=adapter, adapter_path="/p", adapter_replica=recorded_on
    )


def reports(**held: list[str]) -> list[dict[str, list[str]]]:
    """Routing stats as Serve polled them: the adapters each replica (by index) reported."""
    return [{"adapters": held.get(f"r{i}", [])} for i in range(len(IDS))]


def test_the_catalog_keeps_where_each_adapter_loaded_until_it_is_unloaded() -> None:
    catalog, x = AdapterCatalog("e"), AdapterRef(X, "m", "/x")
    on_0, on_1 = Placement(X, "replica-0", 100.0), Placement(X, "replica-1", 101.0)
    assert catalog.add(x, 2, on_0)[1].placements == (on_0,)
    assert catalog.add(x, 2, on_0)[1].version == 1  # the same load recorded again: no change
    assert catalog.add(x, 2, on_1)[1].placements == (on_1,) and catalog.version == 2  # a later load elsewhere
    assert catalog.add(AdapterRef("y", "m", "/y"), 2, on_0)[1].placements == (on_1,)  # another adapter's: ignored
    assert catalog.add(AdapterRef("z", "m", "/z"), 2, Placement("z", "replica-0", 102.0))[0] == "limit"
    assert catalog.add(AdapterRef(X, "m", "/other"), 2, on_0) == ("taken", catalog.state())
    assert catalog.state().placements == (on_1,)  # refused loads record nothing
    assert catalog.remove(X)[1].placements == ()  # bounded: it goes with its adapter


def test_a_placement_steers_for_a_bounded_time() -> None:
    placed = Placement(X, "replica-0", 1_000.0)
    assert placed.steers(1_000.0) and placed.steers(1_000.0 + PLACEMENT_KEEP_S - 0.1)
    assert not placed.steers(1_000.0 + PLACEMENT_KEEP_S)
    assert placed.steers(999.0)  # read on a clock a little behind the writer's
    assert not placed.steers(1_000.0 - PLACEMENT_KEEP_S)  # far behind: not trusted


def test_every_router_sends_a_just_loaded_adapter_where_the_catalog_recorded_its_load() -> None:
    loader, outcomes = RoutingCore.from_kwargs({}), []
    other = RoutingCore.from_kwargs({}, lambda adapter, outcome: outcomes.append(outcome))
    loaded_on = loader.choose_for_call(IDS, reports(), [0, 0], [load_request("load", X, "/p")])
    elsewhere = next(rid for rid in IDS if rid != loaded_on)
    # The other router's poll came later: it shows an adapter loaded on that replica since, not X yet.
    later = reports(**{f"r{IDS.index(loaded_on)}": ["y"]})
    assert other.choose_for_call(IDS, later, [0, 0], [naming(X)]) == elsewhere  # by its stats alone: a 2nd load
    assert other.choose_for_call(IDS, later, [0, 0], [naming(X, loaded_on)]) == loaded_on
    assert outcomes == ["placed", "hit"]
    assert other.choose_for_call([elsewhere], later[:1], [0], [naming(X, loaded_on)]) == elsewhere  # it is gone
    assert recorded_replica([[naming(X, "r"), naming(X)]]) == "r" and recorded_replica(["text"]) == ""


def test_a_recorded_replica_that_is_overloaded_still_spills() -> None:
    core = RoutingCore.from_kwargs({})
    for i in range(20):  # outstanding work this router sent to replica-0
        core.started("replica-0", f"r{i}", 100)
    assert core.choose_for_call(IDS, reports(), [20, 0], [naming(X, "replica-0")]) == "replica-1"


async def test_a_copy_hands_out_a_placement_while_it_steers_and_forgets_it_with_the_unload() -> None:
    lora = {"dynamic": True, "max_dynamic_adapters": 4}
    config = AppConfig.model_validate({"models": [{"id": "m", "source": "/nonexistent/m", "lora": lora}]})
    now = [1_000.0]
    view = AdapterView(AdapterDirectory(config.models), LocalCatalog(), wall_clock=lambda: now[0])
    assert await view.add(X, "/x", "m", "replica-1") is None
    x = await view.find(X)
    assert view.placed_on(x) == "replica-1" and view.placed_on(None) == ""
    now[0] += PLACEMENT_KEEP_S
    assert view.placed_on(x) == ""  # by now the replica's own stats say whether it holds it
    now[0] -= 1.0
    assert await view.remove(X) is None and view.placed_on(x) == ""


async def test_a_load_through_one_router_steers_the_adapters_requests_through_another(tmp_path: Path) -> None:
    async with an_app(tmp_path) as app:
        first, second = await app.router(), await app.router()
        sent: list[RelayRequest] = []
        stream = app.replica.stream
        app.replica.stream = lambda requests: (sent.extend(requests), stream(requests))[1]  # type: ignore[method-assign]
        loaded = await first.post("/v1/load_lora_adapter", json=app.load)
        assert loaded.status_code == 200 and LOADED_ON_HEADER.decode() not in loaded.headers  # vLLM's answer
        assert [p.replica_id for p in app.catalog.catalog.state().placements] == [app.replica.replica_name]
        assert (await second.post("/v1/chat/completions", json=chat("d"))).status_code == 200
        assert (await first.post("/v1/chat/completions", json=chat("a"))).status_code == 200
        assert [(r.adapter, r.adapter_replica) for r in sent[1:]] == [("d", app.replica.replica_name), ("a", "")]
