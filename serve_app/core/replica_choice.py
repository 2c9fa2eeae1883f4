"""Replica choice without Ray: a handle call's routing key, cost and adapter, per-replica load
estimates, and :class:`RoutingCore`, the policy plus outstanding-work bookkeeping that
``serve_app.router.replica_choice.PolicyRequestRouter`` (Ray Serve's ``RequestRouter``) drives.
See that module's docstring for where each load figure comes from.

Which LoRA adapters a replica holds comes from its routing stats, polled every couple of seconds,
and from :class:`RecentAdapters`: where this router sent an adapter (its load, or a request naming
it) since then, and, for a run-time adapter, from the replica the app's catalog recorded its load
on (carried by the request: ``adapter_replica``), which every router replica knows. Without these,
requests right after a run-time load were placed as if no replica held the adapter (by each
router's own polled stats, which may differ), and another replica loaded it too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from serve_app.config_router import ReplicaChoiceConfig
from serve_app.core.policies import (
    ROUTING_STAT_ADAPTERS,
    ROUTING_STAT_OUTSTANDING_REQUESTS,
    ROUTING_STAT_OUTSTANDING_TOKENS,
    AdapterAffinityPolicy,
    OutstandingWork,
    PowerOfTwoPolicy,
    ReplicaLoad,
    RoutingPolicy,
    WorkToken,
    make_policy,
)

DEFAULT_COST = 1
# How long a router counts a replica it sent an adapter to as holding it: a few routing-stats
# periods (serve_app.app polls them every 2 s), by when the replica's own report says so.
RECENT_ADAPTER_S = 10.0


def routing_key_and_cost(args: Sequence[Any]) -> tuple[str, int]:
    """Routing key and token cost of a handle call from its positional arguments."""
    first = args[0] if args else None
    if isinstance(first, list | tuple) and first and all(hasattr(r, "cost_hint") for r in first):
        return str(getattr(first[0], "routing_text", "")), sum(int(r.cost_hint) for r in first)
    if first is not None and hasattr(first, "cost_hint"):
        return str(getattr(first, "routing_text", "")), int(first.cost_hint)
    return "", DEFAULT_COST


def _first_request_str(args: Sequence[Any], attribute: str) -> str:
    """A string attribute of a handle call's (first) request, "" when absent."""
    first = args[0] if args else None
    if isinstance(first, list | tuple) and first:
        first = first[0]
    value = getattr(first, attribute, "")
    return value if isinstance(value, str) else ""


def routing_adapter(args: Sequence[Any]) -> str:
    """The LoRA adapter a handle call's requests name ("" for the base; a batch names one model)."""
    return _first_request_str(args, "adapter")


def loading_adapter(args: Sequence[Any]) -> str:
    """The adapter a relayed ``/v1/load_lora_adapter`` loads ("" for any other call)."""
    return _first_request_str(args, "loads_adapter")


def recorded_replica(args: Sequence[Any]) -> str:
    """The replica the catalog recorded the named adapter's load on ("" when none, or it no longer steers)."""
    return _first_request_str(args, "adapter_replica")


def holding(recent: frozenset[str], replica_id: str, adapter: str, recorded_on: str) -> frozenset[str]:
    """What a replica counts as holding beside its report: what this router just sent there, and
    ``adapter`` where the catalog recorded its load (once the replica's stats report it, or it is
    gone from the candidates, that changes nothing)."""
    return recent | {adapter} if adapter and replica_id == recorded_on else recent


def target_replica(args: Sequence[Any]) -> str | None:
    """The replica a call must reach (a ``CancelRequests``), or None for any call the policy places."""
    target = getattr(args[0], "target_replica_id", None) if args else None
    return target if isinstance(target, str) else None


def _stat(stats: Mapping[str, Any] | None, key: str) -> int:
    value = (stats or {}).get(key, 0)
    return int(value) if isinstance(value, int | float) else 0


def _adapters(stats: Mapping[str, Any] | None) -> frozenset[str]:
    value = (stats or {}).get(ROUTING_STAT_ADAPTERS)
    return frozenset(a for a in value if isinstance(a, str)) if isinstance(value, list | tuple) else frozenset()


def estimate_load(
    local: ReplicaLoad, routing_stats: Mapping[str, Any] | None, queue_len: int | None, mean_cost: float
) -> ReplicaLoad:
    """Merge this router's view of one replica with what the replica and Ray report (see module doc)."""
    requests = max(local.outstanding_requests, _stat(routing_stats, ROUTING_STAT_OUTSTANDING_REQUESTS), queue_len or 0)
    tokens = max(
        local.outstanding_tokens,
        _stat(routing_stats, ROUTING_STAT_OUTSTANDING_TOKENS),
        round((queue_len or 0) * mean_cost),
    )
    return ReplicaLoad(local.replica_id, tokens, requests, _adapters(routing_stats), local.recent_adapters)


class RecentAdapters:
    """Where this router sent each adapter in the last ``keep_s`` seconds: that replica holds it
    once the call is served (a load, or vLLM loading it for a request), before its routing stats
    can say so. Only this router knows; placing an adapter no replica holds reads the stats alone,
    so every router still places it on the same replica."""

    def __init__(self, keep_s: float = RECENT_ADAPTER_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.keep_s = keep_s
        self._clock = clock
        self._until: dict[str, dict[str, float]] = {}  # replica id -> adapter -> when to forget it

    def sent(self, replica_id: str, adapter: str) -> None:
        self._forget_old()
        self._until.setdefault(replica_id, {})[adapter] = self._clock() + self.keep_s

    def on(self, replica_id: str) -> frozenset[str]:
        now = self._clock()
        return frozenset(a for a, until in self._until.get(replica_id, {}).items() if until > now)

    def forget_replica(self, replica_id: str) -> None:
        self._until.pop(replica_id, None)

    def size(self) -> int:
        self._forget_old()
        return sum(len(adapters) for adapters in self._until.values())

    def _forget_old(self) -> None:
        now = self._clock()
        for replica_id, adapters in list(self._until.items()):
            for adapter in [a for a, until in adapters.items() if until <= now]:
                del adapters[adapter]
            if not adapters:
                del self._until[replica_id]


class RoutingCore:
    """The Ray-free part of the router: policy, outstanding-work bookkeeping, load estimates."""

    def __init__(
        self,
        policy: RoutingPolicy,
        affinity: AdapterAffinityPolicy | None = None,
        on_adapter_routed: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.affinity = affinity  # for requests naming a LoRA adapter; None: they route by ``policy``
        self.on_adapter_routed = on_adapter_routed  # (adapter, outcome), e.g. a metric
        self.work = OutstandingWork()
        self.recent = RecentAdapters(clock=clock)
        # (replica id, internal request id) -> tokens; a list because Ray may reuse an internal
        # request id across dependent calls.
        self._tokens: dict[tuple[str, str], list[WorkToken]] = {}

    @classmethod
    def from_kwargs(
        cls,
        request_router_kwargs: Mapping[str, Any],
        on_adapter_routed: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> RoutingCore:
        config = ReplicaChoiceConfig.model_validate(dict(request_router_kwargs))
        affinity = AdapterAffinityPolicy(config.adapter_load_factor, PowerOfTwoPolicy())
        return cls(make_policy(config), affinity if config.adapter_affinity else None, on_adapter_routed, clock)

    def choose(
        self,
        replica_ids: Sequence[str],
        routing_stats: Sequence[Mapping[str, Any] | None],
        queue_lens: Sequence[int | None],
        routing_key: str,
        cost: int,
        adapter: str = "",
        counted: bool = True,
        recorded_on: str = "",
    ) -> str:
        """The replica for a call; ``adapter``: the one it names (or loads: then not ``counted``);
        ``recorded_on``: the replica the catalog recorded the adapter's load on."""
        mean_cost = self.work.mean_cost() or float(cost)
        loads = [
            estimate_load(
                self.work.load(rid, holding(self.recent.on(rid), rid, adapter, recorded_on)), stats, qlen, mean_cost
            )
            for rid, stats, qlen in zip(replica_ids, routing_stats, queue_lens, strict=True)
        ]
        if adapter and self.affinity is not None:
            chosen, outcome = self.affinity.choose_for(loads, adapter, cost)
        else:
            chosen = self.policy.choose(loads, routing_key, cost)
            outcome = "hit" if any(load.replica_id == chosen and adapter in load.adapters for load in loads) else "miss"
        if adapter and counted and self.on_adapter_routed is not None:
            self.on_adapter_routed(adapter, outcome)
        return chosen

    def choose_for_call(
        self,
        replica_ids: Sequence[str],
        routing_stats: Sequence[Mapping[str, Any] | None],
        queue_lens: Sequence[int | None],
        args: Sequence[Any],
    ) -> str:
        """:meth:`choose` for a handle call, read from its positional arguments."""
        key, cost = routing_key_and_cost(args)
        if loading := loading_adapter(args):
            return self.choose(replica_ids, routing_stats, queue_lens, key, cost, loading, counted=False)
        adapter, recorded_on = routing_adapter(args), recorded_replica(args)
        return self.choose(replica_ids, routing_stats, queue_lens, key, cost, adapter, recorded_on=recorded_on)

    def routed(self, replica_id: str, request_id: str, args: Sequence[Any]) -> None:
        """A replica accepted a handle call (Ray's ``on_request_routed``)."""
        _, cost = routing_key_and_cost(args)
        self.started(replica_id, request_id, cost)
        if adapter := loading_adapter(args) or routing_adapter(args):
            self.recent.sent(replica_id, adapter)

    def started(self, replica_id: str, request_id: str, cost: int) -> None:
        self._tokens.setdefault((replica_id, request_id), []).append(self.work.start(replica_id, cost))

    def finished(self, replica_id: str, request_id: str) -> None:
        # Ray also reports completion of requests a replica rejected (never "started"): ignore those.
        tokens = self._tokens.get((replica_id, request_id))
        if not tokens:
            return
        self.work.finish(tokens.pop())
        if not tokens:
            del self._tokens[(replica_id, request_id)]

    def forget_replica(self, replica_id: str) -> None:
        self.work.forget_replica(replica_id)
        self.recent.forget_replica(replica_id)
        for key in [k for k in self._tokens if k[0] == replica_id]:
            del self._tokens[key]
