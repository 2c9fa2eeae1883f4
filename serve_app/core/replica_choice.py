"""Replica choice without Ray: a handle call's routing key, cost and adapter, per-replica load
estimates, and :class:`RoutingCore`, the policy plus outstanding-work bookkeeping that
``serve_app.router.replica_choice.PolicyRequestRouter`` (Ray Serve's ``RequestRouter``) drives.
See that module's docstring for where each load figure comes from.
"""

from __future__ import annotations

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


def routing_key_and_cost(args: Sequence[Any]) -> tuple[str, int]:
    """Routing key and token cost of a handle call from its positional arguments."""
    first = args[0] if args else None
    if isinstance(first, list | tuple) and first and all(hasattr(r, "cost_hint") for r in first):
        return str(getattr(first[0], "routing_text", "")), sum(int(r.cost_hint) for r in first)
    if first is not None and hasattr(first, "cost_hint"):
        return str(getattr(first, "routing_text", "")), int(first.cost_hint)
    return "", DEFAULT_COST


def routing_adapter(args: Sequence[Any]) -> str:
    """The LoRA adapter a handle call's requests name ("" for the base; a batch names one model)."""
    first = args[0] if args else None
    if isinstance(first, list | tuple) and first:
        first = first[0]
    adapter = getattr(first, "adapter", "")
    return adapter if isinstance(adapter, str) else ""


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
    return ReplicaLoad(local.replica_id, tokens, requests, _adapters(routing_stats))


class RoutingCore:
    """The Ray-free part of the router: policy, outstanding-work bookkeeping, load estimates."""

    def __init__(
        self,
        policy: RoutingPolicy,
        affinity: AdapterAffinityPolicy | None = None,
        on_adapter_routed: Callable[[str, str], None] | None = None,
    ) -> None:
        self.policy = policy
        self.affinity = affinity  # for requests naming a LoRA adapter; None: they route by ``policy``
        self.on_adapter_routed = on_adapter_routed  # (adapter, outcome), e.g. a metric
        self.work = OutstandingWork()
        # (replica id, internal request id) -> tokens; a list because Ray may reuse an internal
        # request id across dependent calls.
        self._tokens: dict[tuple[str, str], list[WorkToken]] = {}

    @classmethod
    def from_kwargs(
        cls, request_router_kwargs: Mapping[str, Any], on_adapter_routed: Callable[[str, str], None] | None = None
    ) -> RoutingCore:
        config = ReplicaChoiceConfig.model_validate(dict(request_router_kwargs))
        affinity = AdapterAffinityPolicy(config.adapter_load_factor, PowerOfTwoPolicy())
        return cls(make_policy(config), affinity if config.adapter_affinity else None, on_adapter_routed)

    def choose(
        self,
        replica_ids: Sequence[str],
        routing_stats: Sequence[Mapping[str, Any] | None],
        queue_lens: Sequence[int | None],
        routing_key: str,
        cost: int,
        adapter: str = "",
    ) -> str:
        mean_cost = self.work.mean_cost() or float(cost)
        loads = [
            estimate_load(self.work.load(rid), stats, qlen, mean_cost)
            for rid, stats, qlen in zip(replica_ids, routing_stats, queue_lens, strict=True)
        ]
        if adapter and self.affinity is not None:
            chosen, outcome = self.affinity.choose_for(loads, adapter, cost)
        else:
            chosen = self.policy.choose(loads, routing_key, cost)
            outcome = "hit" if any(load.replica_id == chosen and adapter in load.adapters for load in loads) else "miss"
        if adapter and self.on_adapter_routed is not None:
            self.on_adapter_routed(adapter, outcome)
        return chosen

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
        for key in [k for k in self._tokens if k[0] == replica_id]:
            del self._tokens[key]
