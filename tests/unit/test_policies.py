from __future__ import annotations

import heapq
import random
from collections import Counter
from typing import Any

import pytest

from serve_app.config_router import ReplicaChoiceConfig
from serve_app.core.policies import (
    NoCandidatesError,
    OutstandingWork,
    PowerOfTwoPolicy,
    PrefixAffinityPolicy,
    ReplicaLoad,
    RoundRobinPolicy,
    RoutingPolicy,
    make_policy,
    preferred_replica,
)

REPLICAS = [f"replica-{i}" for i in range(8)]


class UniformRandomPolicy:
    """Baseline that ignores load, to show the balance test can tell policies apart."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choose(self, candidates: list[ReplicaLoad], routing_key: str, cost: int) -> str:
        return self._rng.choice(candidates).replica_id


def p95_imbalance(policy: RoutingPolicy, seed: int, steps: int = 3000, warmup: int = 1000) -> float:
    """One arrival per tick with heavy-tailed costs (20% long); a request lives ~cost/3 ticks.
    Returns the 95th percentile of max/min outstanding tokens across replicas after warm-up."""
    rng = random.Random(seed)
    work = OutstandingWork()
    finishing: list[tuple[float, int, Any]] = []
    ratios = []
    for tick in range(steps):
        while finishing and finishing[0][0] <= tick:
            work.finish(heapq.heappop(finishing)[2])
        cost = rng.randint(2000, 4000) if rng.random() < 0.2 else rng.randint(50, 300)
        token = work.start(policy.choose(work.loads(REPLICAS), "", cost), cost)
        heapq.heappush(finishing, (tick + cost / 3 * rng.uniform(0.5, 1.5), token.id, token))
        if tick >= warmup and tick % 5 == 0:
            tokens = [load.outstanding_tokens for load in work.loads(REPLICAS)]
            ratios.append(max(tokens) / max(1, min(tokens)))
    ratios.sort()
    return ratios[int(0.95 * len(ratios))]


@pytest.mark.parametrize("seed", [0, 1])
def test_pow2_keeps_outstanding_tokens_balanced_on_skewed_costs(seed: int) -> None:
    assert p95_imbalance(PowerOfTwoPolicy(random.Random(seed)), seed) < 1.5
    # The same workload routed blindly is far more skewed: the bound above is not trivial.
    assert p95_imbalance(UniformRandomPolicy(random.Random(seed)), seed) > 1.7


def test_pow2_picks_the_lighter_of_two() -> None:
    policy = PowerOfTwoPolicy(random.Random(3))
    loads = [ReplicaLoad("busy", 10_000, 10), ReplicaLoad("idle", 0, 0)]
    assert {policy.choose(loads, "", 1) for _ in range(20)} == {"idle"}


def test_policies_refuse_empty_candidates() -> None:
    for policy in (PowerOfTwoPolicy(), PrefixAffinityPolicy(), RoundRobinPolicy()):
        with pytest.raises(NoCandidatesError):
            policy.choose([], "key", 1)


def test_prefix_affinity_sticks_until_load_bound_then_spills() -> None:
    policy = PrefixAffinityPolicy(prefix_chars=16, load_factor=1.5, fallback=PowerOfTwoPolicy(random.Random(0)))
    replicas = REPLICAS[:4]
    work = OutstandingWork()
    prefix = "You are a helpful assistant."
    home = preferred_replica(prefix[:16], replicas)
    chosen = []
    for i in range(4):
        replica = policy.choose(work.loads(replicas), f"{prefix} question {i}", 100)
        work.start(replica, 100)
        chosen.append(replica)
    # Home load 0 <= 0+100 and 100 <= 1.5*25+100 keep affinity; 200 > 1.5*50+100 spills.
    assert chosen[:2] == [home, home]
    assert chosen[2] != home
    assert policy.affinity_hits >= 2 and policy.spills >= 1


def test_prefix_affinity_returns_home_once_the_cluster_is_evenly_loaded() -> None:
    policy = PrefixAffinityPolicy(prefix_chars=8)
    loads = [ReplicaLoad(r, 5000, 10) for r in REPLICAS]
    home = preferred_replica("shared-p", REPLICAS)
    assert {policy.choose(loads, f"shared-prefix {i}", 300) for i in range(10)} == {home}


def test_prefix_affinity_spreads_distinct_prefixes_and_moves_few_on_removal() -> None:
    keys = [f"user-{i:04d} system prompt" for i in range(400)]
    before = {k: preferred_replica(k, REPLICAS) for k in keys}
    assert min(Counter(before.values()).values()) > 400 / len(REPLICAS) / 2
    survivors = [r for r in REPLICAS if r != "replica-3"]
    after = {k: preferred_replica(k, survivors) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == "replica-3" for k in moved)


def test_empty_routing_key_falls_back_to_pow2() -> None:
    policy = PrefixAffinityPolicy()
    loads = [ReplicaLoad("busy", 9000, 9), ReplicaLoad("idle", 0, 0)]
    assert policy.choose(loads, "", 10) == "idle"


def test_round_robin_cycles_in_id_order() -> None:
    policy = RoundRobinPolicy()
    loads = [ReplicaLoad("c"), ReplicaLoad("a"), ReplicaLoad("b")]
    assert [policy.choose(loads, "", 1) for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]


def test_outstanding_work_tracks_and_releases_once() -> None:
    work = OutstandingWork()
    first = work.start("r1", 100)
    second = work.start("r1", 50)
    work.start("r2", 7)
    assert work.load("r1") == ReplicaLoad("r1", 150, 2)
    assert work.finish(first) is True
    assert work.finish(first) is False
    assert work.load("r1") == ReplicaLoad("r1", 50, 1)
    assert work.mean_cost() == pytest.approx((50 + 7) / 2)
    assert work.forget_replica("r1") == 1
    assert work.finish(second) is False
    assert work.load("r1") == ReplicaLoad("r1", 0, 0)
    assert work.total_requests == 1


@pytest.mark.parametrize(
    ("name", "kind"), [("pow2", PowerOfTwoPolicy), ("prefix", PrefixAffinityPolicy), ("round_robin", RoundRobinPolicy)]
)
def test_make_policy_from_replica_choice_config(name: str, kind: type) -> None:
    policy = make_policy(ReplicaChoiceConfig(policy=name, prefix_chars=32, prefix_load_factor=2.0))
    assert isinstance(policy, kind)
    if isinstance(policy, PrefixAffinityPolicy):
        assert (policy.prefix_chars, policy.load_factor) == (32, 2.0)
