"""Replica choice inside Ray Serve: a ``RequestRouter`` that picks replicas with serve_app's pure
policies. It runs in every handle the router deployment holds to a model deployment.

Ray Serve keeps doing what it does: replica discovery and health (``update_replicas``), the
queue-length cache and probes, ``max_ongoing_requests`` back-pressure and retries. This class only
ranks the candidates Ray hands it: first the replica the configured policy
(``serve_app.core.policies``: pow2 / prefix / round_robin) chooses, then the rest, among which Ray
takes the one with the shortest queue if the first is full.

Load per replica, in tokens and requests, is the larger of
  * what this request router has sent there and not seen complete (``on_request_routed`` /
    ``on_request_completed``; fresh, but blind to other router replicas),
  * what the replica reports from ``record_routing_stats`` (every router replica's work, but up
    to ``request_routing_stats_period_s`` old),
  * Ray's cached queue length for the replica (requests only; converted to tokens with the mean
    cost of this request router's outstanding requests).

Wiring (replica deployment, e.g. in ``serve_app.app.replica_options``)::

    from ray.serve.config import RequestRouterConfig

    options["request_router_config"] = RequestRouterConfig(
        request_router_class="serve_app.router.replica_choice.PolicyRequestRouter",
        # only the replica-choice part of ``router:``, as a dict
        request_router_kwargs=config.router.replica_choice().model_dump(mode="json"),
        request_routing_stats_period_s=2.0,  # how often replicas' record_routing_stats runs
    )

The same works as a dict in a Serve config file (``request_router_config:`` under the
deployment). ``request_router_kwargs`` must validate as
:class:`serve_app.config_router.ReplicaChoiceConfig`.
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
from typing import Any

# Ray's public request_router module re-exports ReplicaResult without listing it in __all__.
from ray.serve.request_router import (  # type: ignore[attr-defined]
    PendingRequest,
    ReplicaID,
    ReplicaResult,
    RequestRouter,
    RunningReplica,
)

from serve_app.core.replica_choice import RoutingCore, target_replica
from serve_app.observability.recorder import ServeAppMetrics

logger = logging.getLogger("serve_app.router")


class PolicyRequestRouter(RequestRouter):
    """Ray Serve request router driven by :class:`RoutingCore` (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.core = RoutingCore.from_kwargs({})

    def initialize_state(self, **kwargs: Any) -> None:
        """Receives ``RequestRouterConfig.request_router_kwargs``: a ReplicaChoiceConfig as a dict."""
        metrics = ServeAppMetrics.for_ray()
        deployment = self._deployment_id.name

        def routed(adapter: str, outcome: str) -> None:
            metrics.adapter_routed(deployment, adapter, outcome)

        self.core = RoutingCore.from_kwargs(kwargs, routed)
        logger.info("request router for %s uses policy %s", self._deployment_id, type(self.core.policy).__name__)

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
        chosen_id = self.core.choose_for_call(
            [r.replica_id.unique_id for r in candidate_replicas],
            [r.routing_stats for r in candidate_replicas],
            [self.replica_queue_len_cache.get(r.replica_id) for r in candidate_replicas],
            args,
        )
        chosen = [r for r in candidate_replicas if r.replica_id.unique_id == chosen_id]
        rest = [r for r in candidate_replicas if r.replica_id.unique_id != chosen_id]
        return [chosen, rest] if rest else [chosen]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult) -> None:
        self.core.routed(replica_id.unique_id, pending_request.metadata.internal_request_id, pending_request.args)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self.core.finished(replica_id.unique_id, internal_request_id)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.core.forget_replica(replica_id.unique_id)
