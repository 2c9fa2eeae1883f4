"""Adapter affinity (serve_app.core.policies.AdapterAffinityPolicy) and its wiring in the request router's core."""

from __future__ import annotations

import random
from collections import OrderedDict

import pytest

from serve_app.core.policies import AdapterAffinityPolicy, PowerOfTwoPolicy, ReplicaLoad
from serve_app.core.replica_choice import RoutingCore, estimate_load, routing_adapter
from serve_app.replica.contract import RelayRequest


def load(rid: str, tokens: int = 0, adapters: tuple[str, ...] = ()) -> ReplicaLoad:
    return ReplicaLoad(rid, tokens, 1 if tokens else 0, frozenset(adapters))


def test_a_replica_holding_the_adapter_wins() -> None:
    policy = AdapterAffinityPolicy()
    replicas = [load("r1", 100), load("r2", 120, ("a",)), load("r3", 90)]
    assert policy.choose_for(replicas, "a", 10) == ("r2", "hit")


def test_the_least_loaded_holder_wins() -> None:
    policy = AdapterAffinityPolicy()
    replicas = [load("r1", 300, ("a",)), load("r2", 100, ("a",)), load("r3", 0)]
    assert policy.choose_for(replicas, "a", 10) == ("r2", "hit")


def test_without_a_holder_every_router_places_the_adapter_on_the_same_replica() -> None:
    replicas = [load(f"r{i}") for i in range(4)]
    chosen = {AdapterAffinityPolicy().choose_for(replicas, "a", 10) for _ in range(5)}
    assert len(chosen) == 1 and next(iter(chosen))[1] == "placed"
    spread = {AdapterAffinityPolicy().choose_for(replicas, f"adapter-{i}", 10)[0] for i in range(40)}
    assert len(spread) == 4  # different adapters land on different replicas


def test_an_overloaded_holder_spills_to_the_others() -> None:
    policy = AdapterAffinityPolicy(load_factor=1.5, fallback=PowerOfTwoPolicy(random.Random(0)))
    replicas = [load("r1", 1000, ("a",)), load("r2", 10), load("r3", 20)]
    rid, outcome = policy.choose_for(replicas, "a", 10)
    assert outcome == "spill" and rid in ("r2", "r3")
    assert policy.outcomes == {"hit": 0, "placed": 0, "spill": 1}


def test_a_single_replica_is_always_chosen() -> None:
    assert AdapterAffinityPolicy().choose_for([load("r1", 10_000)], "a", 10) == ("r1", "placed")


def test_routing_reads_the_adapter_from_the_call_and_the_stats() -> None:
    request = RelayRequest("id", "/v1/completions", b"{}", adapter="a", cost_hint=5)
    assert routing_adapter([request]) == routing_adapter([[request, request]]) == "a"
    assert routing_adapter([RelayRequest("id", "/p", b"")]) == routing_adapter([]) == ""
    merged = estimate_load(ReplicaLoad("r1"), {"adapters": ["a", 3, "b"]}, None, 1.0)
    assert merged.adapters == frozenset({"a", "b"})
    assert estimate_load(ReplicaLoad("r1"), {"adapters": "a"}, None, 1.0).adapters == frozenset()


@pytest.mark.parametrize("affinity", [True, False])
def test_the_router_core_applies_affinity_only_to_adapter_requests(affinity: bool) -> None:
    core = RoutingCore.from_kwargs({"policy": "round_robin", "adapter_affinity": affinity})
    stats = [{"adapters": []}, {"adapters": ["a"]}]
    picks = [core.choose(["r1", "r2"], stats, [0, 0], "", 10, adapter="a") for _ in range(4)]
    assert (picks == ["r2"] * 4) is affinity
    assert [core.choose(["r1", "r2"], stats, [0, 0], "", 10) for _ in range(2)] == ["r1", "r2"]


def simulate(policy: str, replicas: int = 2, adapters: int = 4, cache: int = 2, requests: int = 2000) -> float:
    """Share of requests sent to a replica already holding their adapter; each replica keeps its
    ``cache`` most recently used adapters (vLLM's max_cpu_loras LRU), requests finish at once."""
    rng = random.Random(1)
    held: dict[str, OrderedDict[str, None]] = {f"r{i}": OrderedDict() for i in range(replicas)}
    core = RoutingCore.from_kwargs({"policy": "pow2", "adapter_affinity": policy == "affinity"})
    hits = 0
    for _ in range(requests):
        adapter = f"adapter-{rng.randrange(adapters)}"
        stats = [{"adapters": list(held[r])} for r in held]
        chosen = core.choose(list(held), stats, [0] * replicas, "", 10, adapter=adapter)
        hits += adapter in held[chosen]
        held[chosen][adapter] = None
        held[chosen].move_to_end(adapter)
        if len(held[chosen]) > cache:
            held[chosen].popitem(last=False)
    return hits / requests


def test_with_two_replicas_and_four_adapters_affinity_keeps_adapters_where_they_are() -> None:
    # Each replica holds 2 of the 4: affinity finds a holder for nearly every request; pow2 about half.
    affinity, pow2 = simulate("affinity"), simulate("pow2")
    print(f"hit rate, 2 replicas x 2 cached adapters, 4 adapters: affinity {affinity:.3f}, pow2 {pow2:.3f}")
    assert affinity > 0.99 and pow2 < 0.6
