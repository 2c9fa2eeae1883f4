"""Ray Serve custom autoscaling policy driven by engine signals; the decision itself is
:func:`serve_app.core.autoscaling.decide`.

Wired in as the replica deployment's ``autoscaling_config`` by ``serve_app.app._autoscaling``: our
config travels in ``policy_kwargs``, and Ray's own up/down-scale delays are zero there (Ray applies
them *after* a custom policy, so they would add to ours).

Ray instantiates the class once per deployment on the Serve controller with ``policy_kwargs``
(validated as :class:`serve_app.config.AutoscalingConfig`) and calls it every control-loop tick
with an ``AutoscalingContext``; it returns ``(target_replicas, policy_state)``.

The replica class must define (sync or async; Ray samples it every ``look_back_period_s / 5`` or
``metrics_interval_s`` if shorter, pushes the samples every ``metrics_interval_s`` and averages them
over ``look_back_period_s``; values must be int or float)::

    def record_autoscaling_stats(self) -> dict[str, float]:
        stats = self.engine.stats()
        return ReplicaSignals(
            ongoing_requests=len(self._inflight),   # requests inside this replica
            waiting_requests=stats.waiting,         # queued in the engine scheduler
            kv_cache_usage=stats.kv_cache_usage,    # 0..1
        ).as_stats()

(``ReplicaSignals`` is ``serve_app.core.autoscaling.ReplicaSignals``; the keys are
``serve_app_ongoing_requests``, ``serve_app_waiting_requests``, ``serve_app_kv_cache_usage``.)
Without that method only the request count Ray measures itself drives scaling.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ray.serve.config import AutoscalingContext

from serve_app.config import AutoscalingConfig
from serve_app.core.autoscaling import (
    STAT_KV_CACHE_USAGE,
    STAT_ONGOING_REQUESTS,
    STAT_WAITING_REQUESTS,
    AutoscalingState,
    ReplicaSignals,
    ScalingDecision,
    decide,
)
from serve_app.observability.recorder import ServeAppMetrics

logger = logging.getLogger("serve_app.autoscaling")

# The per-replica ongoing-request count Ray itself reports (ray.serve._private.common).
RAY_RUNNING_REQUESTS_KEY = "running_requests"


def signals_from_metrics(
    metrics: Mapping[str, Mapping[Any, float]], replica_ids: Sequence[Any], total_running_requests: float = 0.0
) -> list[ReplicaSignals]:
    """One :class:`ReplicaSignals` per replica that has reported anything.

    When no replica reports per-replica metrics at all (``record_autoscaling_stats`` missing,
    Ray counting requests at handles), Ray's deployment-wide running-request total is spread
    evenly so that ongoing load still drives scaling.
    """
    ongoing = metrics.get(STAT_ONGOING_REQUESTS, {})
    ray_running = metrics.get(RAY_RUNNING_REQUESTS_KEY, {})
    waiting = metrics.get(STAT_WAITING_REQUESTS, {})
    kv = metrics.get(STAT_KV_CACHE_USAGE, {})
    signals = []
    for rid in replica_ids:
        if not any(rid in series for series in (ongoing, ray_running, waiting, kv)):
            continue
        ongoing_value = ongoing[rid] if rid in ongoing else ray_running.get(rid, 0.0)
        signals.append(ReplicaSignals(float(ongoing_value), float(waiting.get(rid, 0.0)), float(kv.get(rid, 0.0))))
    if not signals and replica_ids and total_running_requests > 0:
        share = total_running_requests / len(replica_ids)
        signals = [ReplicaSignals(ongoing_requests=share) for _ in replica_ids]
    return signals


class EngineSignalPolicy:
    """Callable autoscaling policy (see the module docstring for wiring)."""

    def __init__(self, **autoscaling_config: Any) -> None:
        self.config = AutoscalingConfig.model_validate(autoscaling_config)
        self.last_decision: ScalingDecision | None = None
        # Ray creates the policy once per deployment inside the Serve controller, so these are the
        # controller's metrics (serve_app_replicas, serve_app_autoscaling_*).
        self.metrics = ServeAppMetrics.for_ray()

    def __call__(self, ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
        decision = self.decide(ctx)
        if decision.target_replicas != ctx.target_num_replicas:
            logger.info("%s: %s (%s)", ctx.deployment_name, decision.detail, decision.reason)
        else:
            logger.debug("%s: %s (%s)", ctx.deployment_name, decision.detail, decision.reason)
        self.last_decision = decision
        self.metrics.autoscaling_decision(
            ctx.deployment_name,
            current_replicas=len(ctx.running_replicas),
            desired_replicas=decision.desired_replicas,
            target_replicas=decision.target_replicas,
            reason=decision.reason,
        )
        return decision.target_replicas, decision.state.to_dict()

    def decide(self, ctx: AutoscalingContext) -> ScalingDecision:
        queued = float(ctx.total_queued_requests or 0.0)
        # Ray's total counts queued requests too; they enter decide() separately.
        running = max(0.0, float(ctx.total_num_requests or 0.0) - queued)
        signals = signals_from_metrics(ctx.aggregated_metrics or {}, list(ctx.running_replicas), running)
        return decide(
            signals,
            self.config,
            current_replicas=ctx.target_num_replicas,
            now=ctx.current_time if ctx.current_time is not None else time.time(),
            state=AutoscalingState.from_dict(ctx.policy_state or {}),
            queued_requests=queued,
        )
