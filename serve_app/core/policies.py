"""Replica choice: which replica gets the next request (or batch).

Policies are pure: they see a snapshot of candidate loads and return one replica id. Load comes
from :class:`OutstandingWork` (what this router has sent and not seen finish) merged with what
replicas report (see ``serve_app.router.replica_choice``).
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from serve_app.config_router import ReplicaChoiceConfig
from serve_app.errors import ServeAppError

# Keys of the dict a replica returns from ``record_routing_stats`` (read by the Ray router adapter).
ROUTING_STAT_OUTSTANDING_TOKENS = "outstanding_tokens"
ROUTING_STAT_OUTSTANDING_REQUESTS = "outstanding_requests"
ROUTING_STAT_ADAPTERS = "adapters"  # the LoRA adapters the replica's engine holds now


class NoCandidatesError(ServeAppError, ValueError):
    """A policy was asked to choose among zero replicas."""


@dataclass(frozen=True)
class ReplicaLoad:
    replica_id: str
    outstanding_tokens: int = 0
    outstanding_requests: int = 0
    adapters: frozenset[str] = frozenset()  # as the replica reported them
    recent_adapters: frozenset[str] = frozenset()  # sent there by this router since (not reported yet)

    def holds(self, adapter: str) -> bool:
        return adapter in self.adapters or adapter in self.recent_adapters


class RoutingPolicy(Protocol):
    def choose(self, candidates: Sequence[ReplicaLoad], routing_key: str, cost: int) -> str:
        """The id of the replica that should serve a request of ``cost`` tokens."""
        ...


def _require(candidates: Sequence[ReplicaLoad]) -> None:
    if not candidates:
        raise NoCandidatesError("no candidate replicas")


def _lighter(a: ReplicaLoad, b: ReplicaLoad) -> ReplicaLoad:
    """Fewer outstanding tokens wins; requests break ties; ``a`` wins a full tie."""
    return b if (b.outstanding_tokens, b.outstanding_requests) < (a.outstanding_tokens, a.outstanding_requests) else a


class PowerOfTwoPolicy:
    """Two random candidates, the one with fewer outstanding tokens wins: near-least-loaded
    balance without herding every router onto the same least-loaded replica."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, candidates: Sequence[ReplicaLoad], routing_key: str = "", cost: int = 0) -> str:
        _require(candidates)
        if len(candidates) == 1:
            return candidates[0].replica_id
        first, second = self._rng.sample(range(len(candidates)), 2)
        return _lighter(candidates[first], candidates[second]).replica_id


def rendezvous_score(key: str, replica_id: str) -> int:
    """Stable across processes and restarts (unlike ``hash()``), so every router agrees."""
    digest = hashlib.blake2b(f"{key}\x00{replica_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def preferred_replica(key: str, replica_ids: Iterable[str]) -> str:
    """Rendezvous (highest-random-weight) hashing: adding or removing a replica only moves the
    keys that replica wins or loses."""
    return max(replica_ids, key=lambda rid: rendezvous_score(key, rid))


class PrefixAffinityPolicy:
    """Requests sharing a prompt prefix go to the same replica, so vLLM's prefix cache hits.

    Affinity yields to balance: when the preferred replica's outstanding tokens exceed
    ``load_factor`` x the candidates' mean plus a slack, the request spills to power-of-two among
    the others. The slack (default: the request's own cost, i.e. room for one more request like
    this one) lets a lightly loaded cluster keep affinity where the mean is still tiny.
    """

    def __init__(
        self,
        prefix_chars: int = 256,
        load_factor: float = 1.5,
        slack_tokens: int | None = None,
        fallback: PowerOfTwoPolicy | None = None,
    ) -> None:
        if prefix_chars < 1 or load_factor < 1.0:
            raise ValueError("prefix_chars must be >= 1 and load_factor >= 1.0")
        self.prefix_chars = prefix_chars
        self.load_factor = load_factor
        self.slack_tokens = slack_tokens
        self._fallback = fallback or PowerOfTwoPolicy()
        self.affinity_hits = 0
        self.spills = 0

    def load_bound(self, candidates: Sequence[ReplicaLoad], cost: int) -> float:
        mean = sum(c.outstanding_tokens for c in candidates) / len(candidates)
        slack = cost if self.slack_tokens is None else self.slack_tokens
        return self.load_factor * mean + slack

    def choose(self, candidates: Sequence[ReplicaLoad], routing_key: str, cost: int) -> str:
        _require(candidates)
        prefix = routing_key[: self.prefix_chars]
        if not prefix or len(candidates) == 1:
            return self._fallback.choose(candidates, routing_key, cost)
        by_id = {c.replica_id: c for c in candidates}
        preferred = by_id[preferred_replica(prefix, by_id)]
        if preferred.outstanding_tokens <= self.load_bound(candidates, cost):
            self.affinity_hits += 1
            return preferred.replica_id
        self.spills += 1
        others = [c for c in candidates if c.replica_id != preferred.replica_id]
        return self._fallback.choose(others, routing_key, cost)


class AdapterAffinityPolicy:
    """A request naming a LoRA adapter goes to the least loaded replica that holds it (its engine
    has it loaded: no load from disk, and its adapters stay few), spilling like the prefix policy.

    Holding an adapter is known from replica stats and from where this router just sent it. No
    holder (a new or evicted adapter): the replica reporting the fewest adapters, ties broken by
    rendezvous hashing of the adapter's name, so adapters spread evenly (a replica's adapter cache
    is bounded: one that gets more adapters than it holds evicts and reloads them) and every router
    places it on the same replica (they share the reports, not what each just sent). Either
    way, a chosen replica loaded past ``load_factor`` x the mean (plus the request's own cost)
    spills to power-of-two.
    """

    def __init__(self, load_factor: float = 1.5, fallback: PowerOfTwoPolicy | None = None) -> None:
        if load_factor < 1.0:
            raise ValueError("load_factor must be >= 1.0")
        self.load_factor = load_factor
        self._fallback = fallback or PowerOfTwoPolicy()
        self.outcomes = {"hit": 0, "placed": 0, "spill": 0}

    def choose_for(self, candidates: Sequence[ReplicaLoad], adapter: str, cost: int) -> tuple[str, str]:
        """(replica id, outcome): ``hit`` (a holder), ``placed`` (none held it), ``spill`` (too loaded)."""
        _require(candidates)
        holders = [c for c in candidates if c.holds(adapter)]
        if holders:
            chosen, outcome = min(holders, key=lambda c: (c.outstanding_tokens, c.outstanding_requests)), "hit"
        else:
            room = min(candidates, key=lambda c: (len(c.adapters), -rendezvous_score(adapter, c.replica_id)))
            chosen, outcome = room, "placed"
        bound = self.load_factor * sum(c.outstanding_tokens for c in candidates) / len(candidates) + cost
        if len(candidates) > 1 and chosen.outstanding_tokens > bound:
            chosen, outcome = self._by_id(candidates, self._fallback.choose(candidates, adapter, cost)), "spill"
        self.outcomes[outcome] += 1
        return chosen.replica_id, outcome

    @staticmethod
    def _by_id(candidates: Sequence[ReplicaLoad], replica_id: str) -> ReplicaLoad:
        return next(c for c in candidates if c.replica_id == replica_id)


class RoundRobinPolicy:
    """Cycles through candidates in replica-id order (stable whatever order the caller uses)."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def choose(self, candidates: Sequence[ReplicaLoad], routing_key: str = "", cost: int = 0) -> str:
        _require(candidates)
        ordered = sorted(c.replica_id for c in candidates)
        return ordered[next(self._counter) % len(ordered)]


@dataclass(frozen=True)
class WorkToken:
    """Proof of one started request; pass it back to :meth:`OutstandingWork.finish`."""

    id: int
    replica_id: str
    cost: int


class OutstandingWork:
    """Requests sent to replicas and not yet finished, per replica, in tokens and requests.

    ``finish`` is idempotent, so a completion reported twice (or for a replica already
    forgotten) never drives a load negative.
    """

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._open: dict[int, WorkToken] = {}
        self._tokens: dict[str, int] = {}
        self._requests: dict[str, int] = {}

    def start(self, replica_id: str, cost: int) -> WorkToken:
        token = WorkToken(next(self._ids), replica_id, max(0, cost))
        self._open[token.id] = token
        self._tokens[replica_id] = self._tokens.get(replica_id, 0) + token.cost
        self._requests[replica_id] = self._requests.get(replica_id, 0) + 1
        return token

    def finish(self, token: WorkToken) -> bool:
        """True when this call released the work; False when it was already released."""
        if self._open.pop(token.id, None) is None:
            return False
        self._tokens[token.replica_id] -= token.cost
        self._requests[token.replica_id] -= 1
        if self._requests[token.replica_id] == 0:
            del self._tokens[token.replica_id], self._requests[token.replica_id]
        return True

    def forget_replica(self, replica_id: str) -> int:
        """Drop a dead replica's work; returns how many requests were dropped."""
        dropped = [t for t in self._open.values() if t.replica_id == replica_id]
        for token in dropped:
            self.finish(token)
        return len(dropped)

    def load(self, replica_id: str, recent_adapters: frozenset[str] = frozenset()) -> ReplicaLoad:
        tokens, requests = self._tokens.get(replica_id, 0), self._requests.get(replica_id, 0)
        return ReplicaLoad(replica_id, tokens, requests, recent_adapters=recent_adapters)

    def loads(self, replica_ids: Iterable[str]) -> list[ReplicaLoad]:
        return [self.load(rid) for rid in replica_ids]

    @property
    def total_requests(self) -> int:
        return len(self._open)

    def mean_cost(self) -> float:
        """Mean cost of the requests outstanding now (0 when none)."""
        return sum(self._tokens.values()) / len(self._open) if self._open else 0.0


def make_policy(config: ReplicaChoiceConfig, rng: random.Random | None = None) -> RoutingPolicy:
    if config.policy == "pow2":
        return PowerOfTwoPolicy(rng)
    if config.policy == "prefix":
        return PrefixAffinityPolicy(config.prefix_chars, config.prefix_load_factor, fallback=PowerOfTwoPolicy(rng))
    if config.policy == "round_robin":
        return RoundRobinPolicy()
    raise ValueError(f"unknown routing policy {config.policy!r}")
