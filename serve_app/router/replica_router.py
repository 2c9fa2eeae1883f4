"""A Ray Serve ``RequestRouter`` that picks replicas with serve_app's pure policies.

Ray Serve keeps doing what it does: replica discovery and health (``update_replicas``), the
queue-length cache and probes, ``max_ongoing_requests`` back-pressure and retries. This class only
ranks the candidates Ray hands it: first the replica the configured policy
(``serve_app.core.policies``: pow2 / prefix / round_robin) chooses, then the rest, among which Ray
takes the one with the shortest queue if the first is full.

Load per replica, in tokens and requests, is the larger of
  * what this router has sent there and not seen complete (``on_request_routed`` /
    ``on_request_completed``; fresh, but blind to other routers),
  * what the replica reports from ``record_routing_stats`` (every router's work, but up to
    ``request_routing_stats_period_s`` old),
  * Ray's cached queue length for the replica (requests only; converted to tokens with the mean
    cost of this router's outstanding requests).

Wiring (replica deployment, e.g. in ``serve_app.app.replica_options``)::

    from ray.serve.config import RequestRouterConfig

    options["request_router_config"] = RequestRouterConfig(
        request_router_class="serve_app.router.replica_router.PolicyRequestRouter",
        request_router_kwargs=config.router.model_dump(mode="json"),  # a RouterConfig as a dict
        request_routing_stats_period_s=2.0,  # how often replicas' record_routing_stats runs
    )

The same works as a dict in a Serve config file (``request_router_config:`` under the
deployment). ``request_router_kwargs`` must validate as :class:`serve_app.config.RouterConfig`.
The replica class should define (sync or async, called by the Serve controller)::

    def record_routing_stats(self) -> dict[str, Any]:
        return {"outstanding_tokens": int, "outstanding_requests": int, ...}  # extra keys ignored

A call whose first argument has a ``target_replica_id`` (``CancelRequests``) goes to that replica.
Requests are read from the handle call's first positional argument: a ``GenerationRequest`` or a
list of them (a router batch), via ``.routing_text`` and ``.cost_hint``. Calls with anything else
(embeddings, probes) route with an empty key and cost 1. ``on_request_routed`` only fires when Ray
uses its rejection protocol (the default everywhere except Ray Client); without it, load falls
back to routing stats and queue lengths.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, ReplicaResult, RequestRouter, RunningReplica

from serve_app.config import RouterConfig
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
from serve_app.observability.recorder import ServeAppMetrics

logger = logging.getLogger("serve_app.router")

DEFAULT_COST = 1


def routing_key_and_cost(args: Sequence[Any]) -> tuple[str, int]:
    """Routing key and token cost of a handle call from its positional arguments."""
    first = args[0] if args else None
    if isinstance(first, list | tuple) and first and all(hasattr(r, "cost_hint") for r in first):
        return str(getattr(first[0], "routing_text", "")), sum(int(r.cost_hint) for r in first)
    if hasattr(first, "cost_hint"):
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
        cls, router_kwargs: Mapping[str, Any], on_adapter_routed: Callable[[str, str], None] | None = None
    ) -> RoutingCore:
        config = RouterConfig.model_validate(dict(router_kwargs))
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


class PolicyRequestRouter(RequestRouter):
    """Ray Serve request router driven by :class:`RoutingCore` (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.core = RoutingCore.from_kwargs({})

    def initialize_state(self, **kwargs: Any) -> None:
        """Receives ``RequestRouterConfig.request_router_kwargs``: a RouterConfig as a dict."""
        metrics = ServeAppMetrics.for_ray()
        deployment = self._deployment_id.name

        def routed(adapter: str, outcome: str) -> None:
            metrics.adapter_routed(deployment, adapter, outcome)

        self.core = RoutingCore.from_kwargs(kwargs, routed)
        logger.info("replica router for %s uses policy %s", self._deployment_id, type(self.core.policy).__name__)

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        if pending_request is not None:
            # Back off between rounds when every replica is full instead of spinning.
            pending_request.routing_context.should_backoff = True
        args = pending_request.args if pending_request is not None else []
        target = target_replica(args)
        if target is not None:
            # A cancellation goes to the replica running the batch; if that one is gone there is
            # nothing left to cancel, and any replica answers (it ignores unknown ids).
            named = [r for r in candidate_replicas if r.replica_id.unique_id == target]
            return [named or candidate_replicas]
        key, cost = routing_key_and_cost(args)
        chosen_id = self.core.choose(
            [r.replica_id.unique_id for r in candidate_replicas],
            [r.routing_stats for r in candidate_replicas],
            [self.replica_queue_len_cache.get(r.replica_id) for r in candidate_replicas],
            key,
            cost,
            routing_adapter(args),
        )
        chosen = [r for r in candidate_replicas if r.replica_id.unique_id == chosen_id]
        rest = [r for r in candidate_replicas if r.replica_id.unique_id != chosen_id]
        return [chosen, rest] if rest else [chosen]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult) -> None:
        _, cost = routing_key_and_cost(pending_request.args)
        self.core.started(replica_id.unique_id, pending_request.metadata.internal_request_id, cost)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self.core.finished(replica_id.unique_id, internal_request_id)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.core.forget_replica(replica_id.unique_id)
