"""Replica choice right after an adapter is loaded at run time, before the replicas' routing stats
(polled every couple of seconds) report it: the load and the requests after it go through
``RoutingCore`` as ``serve_app.router.replica_choice`` drives it (``choose_for_call``, then
``routed`` once a replica accepted the call), over fake replicas whose polled stats stay stale
until a test polls them, with a fake clock."""

from __future__ import annotations

import itertools
import json
from collections import Counter

from serve_app.core.policies import AdapterAffinityPolicy, ReplicaLoad
from serve_app.core.replica_choice import RoutingCore, loading_adapter
from serve_app.replica.contract import RelayRequest
from serve_app.router.adapter_routes import LOAD_PATH, load_request

ADAPTERS = [f"adapter-{i}" for i in range(16)]
COST = 10


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Replicas:
    """What each replica's engine holds, the routing stats Serve last polled, and every load."""

    def __init__(self, count: int = 2) -> None:
        self.held: dict[str, set[str]] = {f"replica-{i}": set() for i in range(count)}
        self.loads: Counter[str] = Counter()
        self.polled = self.report()
        self._ids = itertools.count()

    def report(self) -> list[dict[str, list[str]]]:
        return [{"adapters": sorted(names)} for names in self.held.values()]

    def poll(self) -> None:
        self.polled = self.report()

    def holders(self, adapter: str) -> set[str]:
        return {rid for rid, names in self.held.items() if adapter in names}

    def rank(self, core: RoutingCore, call: RelayRequest) -> str:
        """The replica the core ranks first for a call."""
        return core.choose_for_call(list(self.held), self.polled, [0] * len(self.held), [call])

    def send(self, core: RoutingCore, call: RelayRequest, taken: str | None = None) -> str:
        """One handle call as Ray's router makes it: the core ranks the replicas, one accepts it
        (``taken``: Ray took another than the first, e.g. the first was full), it is served
        (a replica loads the adapter it names or loads, once) and completes."""
        chosen = taken or self.rank(core, call)
        request_id = f"call-{next(self._ids)}"
        core.routed(chosen, request_id, [call])
        adapter = json.loads(call.body)["lora_name"] if call.path == LOAD_PATH else call.adapter
        if adapter not in self.held[chosen]:
            self.held[chosen].add(adapter)
            self.loads[adapter] += 1
        core.finished(chosen, request_id)
        return chosen


def naming(adapter: str) -> RelayRequest:
    """A chat request naming an adapter added at run time (it carries the adapter's path)."""
    return RelayRequest("id", "/v1/chat/completions", b"{}", cost_hint=COST, adapter=adapter, adapter_path="/p")


def router(clock: Clock, outcomes: list[tuple[str, str]] | None = None) -> RoutingCore:
    record = outcomes.append if outcomes is not None else None
    return RoutingCore.from_kwargs({}, lambda adapter, outcome: record and record((adapter, outcome)), clock)


def test_requests_right_after_a_load_go_to_the_replica_that_loaded_it() -> None:
    replicas, outcomes = Replicas(), []
    core = router(Clock(), outcomes)
    for name in ADAPTERS:
        loaded_on = replicas.send(core, load_request("load", name, "/p"))
        assert [replicas.send(core, naming(name)) for _ in range(3)] == [loaded_on] * 3
    assert replicas.loads == dict.fromkeys(ADAPTERS, 1)  # no second replica loaded any of them
    assert outcomes == [(name, "hit") for name in ADAPTERS for _ in range(3)]  # loads are not counted


def test_a_load_goes_where_every_router_places_an_adapter_no_replica_holds() -> None:
    replicas = Replicas(4)
    replicas.held["replica-0"] = {"static"}
    replicas.poll()
    reported = [ReplicaLoad(rid, adapters=frozenset(n)) for rid, n in replicas.held.items()]
    placed = {name: AdapterAffinityPolicy().choose_for(reported, name, COST)[0] for name in ADAPTERS}
    for name in ADAPTERS:  # two routers, each loading every adapter
        for core in (router(Clock()), router(Clock())):
            assert replicas.rank(core, load_request("load", name, "/p")) == placed[name]
    assert "replica-0" not in placed.values() and len(set(placed.values())) == 3  # fewest adapters first


def test_what_a_router_just_sent_does_not_move_where_it_places_new_adapters() -> None:
    # Every router places a new adapter by the replicas' reports alone, so they all agree.
    replicas, first, second = Replicas(), router(Clock()), router(Clock())
    for name in ADAPTERS[:4]:  # all on one replica (as when Ray took it because the placed one was full)
        replicas.send(first, load_request("load", name, "/p"), taken="replica-0")
    new = [load_request("load", name, "/p") for name in ADAPTERS[4:]]
    placed = [replicas.rank(first, call) for call in new]
    assert placed == [replicas.rank(second, call) for call in new]
    assert set(placed) == {"replica-0", "replica-1"}


def test_another_router_sends_a_just_loaded_adapters_requests_to_the_same_replica() -> None:
    replicas, outcomes = Replicas(), []
    loader, other = router(Clock()), router(Clock(), outcomes)
    for name in ADAPTERS:
        loaded_on = replicas.send(loader, load_request("load", name, "/p"))
        assert replicas.send(other, naming(name)) == loaded_on
    assert replicas.loads == dict.fromkeys(ADAPTERS, 1)
    assert {outcome for _, outcome in outcomes} == {"placed"}  # it does not know; it places it there too


def test_a_router_remembers_where_it_sent_an_adapter_for_a_bounded_time() -> None:
    clock, replicas = Clock(), Replicas()
    core = router(clock)
    name = ADAPTERS[0]
    placed = replicas.rank(core, load_request("load", name, "/p"))
    elsewhere = next(rid for rid in replicas.held if rid != placed)
    replicas.send(core, load_request("load", name, "/p"), taken=elsewhere)  # the placed one was full
    assert replicas.send(core, naming(name)) == elsewhere  # stats still stale: it remembers
    clock.now += core.recent.keep_s - 0.1
    assert replicas.send(core, naming(name)) == elsewhere  # and each call sent there renews it
    replicas.held[elsewhere].clear()  # evicted, and the stats say so
    replicas.poll()
    clock.now += core.recent.keep_s  # nothing sent there since: forgotten, placed by the rule again
    assert replicas.send(core, naming(name)) == placed
    assert replicas.loads[name] == 2 and core.recent.size() == 1


def test_only_a_relayed_load_is_read_as_loading_an_adapter() -> None:
    load = load_request("load", "d", "/p")
    assert loading_adapter([load]) == loading_adapter([[load, naming("a")]]) == "d"
    assert loading_adapter([naming("a")]) == loading_adapter([]) == loading_adapter(["text"]) == ""
    assert json.loads(load.body) == {"lora_name": "d", "lora_path": "/p"}  # vLLM's body, unchanged
