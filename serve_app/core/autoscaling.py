"""The replica-count decision from engine signals (pure; the Ray adapter is
``serve_app.replica.autoscaling_policy``).

Scale up when any per-replica mean is over its target: ongoing requests (replica + router queue),
requests waiting in the engine, or KV-cache usage. Scale down only when the whole load would fit
in fewer replicas with every signal at most ``DOWNSCALE_HEADROOM`` of its target, so that removing
a replica does not immediately push the rest over target again (no flapping). Both directions
must hold for their configured delay before they take effect.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from serve_app.config import AutoscalingConfig

# Keys of the dict a replica returns from ``record_autoscaling_stats``.
STAT_ONGOING_REQUESTS = "serve_app_ongoing_requests"
STAT_WAITING_REQUESTS = "serve_app_waiting_requests"
STAT_KV_CACHE_USAGE = "serve_app_kv_cache_usage"

DOWNSCALE_HEADROOM = 0.8
# Guards ceil() against float noise such as 2.0000000000000004 replicas.
_EPS = 1e-9

Direction = Literal["up", "down"]


@dataclass(frozen=True)
class ReplicaSignals:
    """One replica's load as the engine sees it."""

    ongoing_requests: float = 0.0
    waiting_requests: float = 0.0
    kv_cache_usage: float = 0.0

    def as_stats(self) -> dict[str, float]:
        return {
            STAT_ONGOING_REQUESTS: float(self.ongoing_requests),
            STAT_WAITING_REQUESTS: float(self.waiting_requests),
            STAT_KV_CACHE_USAGE: float(self.kv_cache_usage),
        }


@dataclass(frozen=True)
class AutoscalingState:
    """A scaling wish not yet acted on: its direction and since when it has held."""

    direction: Direction | None = None
    since: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"serve_app_pending_direction": self.direction, "serve_app_pending_since": self.since}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AutoscalingState:
        direction = data.get("serve_app_pending_direction")
        since = data.get("serve_app_pending_since")
        if direction not in ("up", "down") or not isinstance(since, int | float):
            return cls()
        return cls(direction, float(since))


@dataclass(frozen=True)
class ScalingDecision:
    target_replicas: int
    # What the signals ask for now; differs from the target while a delay is pending.
    desired_replicas: int
    # Low-cardinality code for metric labels; ``detail`` is the human-readable log line.
    reason: str
    detail: str
    state: AutoscalingState


@dataclass(frozen=True)
class _Overload:
    ratio: float
    signal: str
    detail: str


def _clamp(replicas: int, config: AutoscalingConfig) -> int:
    return max(config.min_replicas, min(config.max_replicas, replicas))


def _ratio(mean: float, target: float) -> float:
    # A zero target means "none tolerated": any amount is an unbounded overload.
    if target <= 0:
        return math.inf if mean > 0 else 0.0
    return mean / target


def _worst_overload(signals: Sequence[ReplicaSignals], config: AutoscalingConfig, queued: float) -> _Overload:
    count = len(signals)
    means = {
        "ongoing_requests": (sum(s.ongoing_requests for s in signals) + queued) / count,
        "waiting_requests": sum(s.waiting_requests for s in signals) / count,
        "kv_cache_usage": sum(s.kv_cache_usage for s in signals) / count,
    }
    targets = {
        "ongoing_requests": config.target_ongoing_requests,
        "waiting_requests": config.target_waiting_requests,
        "kv_cache_usage": config.max_kv_cache_usage,
    }
    name = max(means, key=lambda n: _ratio(means[n], targets[n]))
    ratio = _ratio(means[name], targets[name])
    return _Overload(ratio, name, f"{name} {means[name]:.2f}/replica vs target {targets[name]:g}")


def _replicas_needed(
    signals: Sequence[ReplicaSignals], config: AutoscalingConfig, queued: float, headroom: float
) -> int:
    """The fewest replicas that would carry the whole load with every signal <= headroom x target."""
    ongoing = sum(s.ongoing_requests for s in signals) + queued
    waiting = sum(s.waiting_requests for s in signals)
    kv = sum(s.kv_cache_usage for s in signals)
    if config.target_waiting_requests <= 0 and waiting > 0:
        return len(signals)
    needs = [
        ongoing / (config.target_ongoing_requests * headroom),
        waiting / (config.target_waiting_requests * headroom) if config.target_waiting_requests > 0 else 0.0,
        kv / (config.max_kv_cache_usage * headroom),
    ]
    return math.ceil(max(needs) - _EPS)


def _hold(current: int, desired: int, reason: str, detail: str) -> ScalingDecision:
    return ScalingDecision(current, desired, reason, detail, AutoscalingState())


def _pending(
    direction: Direction,
    current: int,
    desired: int,
    delay_s: float,
    reason: str,
    detail: str,
    state: AutoscalingState,
    now: float,
) -> ScalingDecision:
    """Act on ``desired`` once the same direction has been wanted for ``delay_s``."""
    since = state.since if state.direction == direction and state.since is not None else now
    waited = now - since
    if waited + _EPS >= delay_s:
        return ScalingDecision(
            desired, desired, reason, f"scale {direction} {current}->{desired}: {detail}", AutoscalingState()
        )
    pending = f"{detail}; scale {direction} {current}->{desired} pending {waited:.1f}/{delay_s:g} s"
    return ScalingDecision(current, desired, f"{reason}_pending", pending, AutoscalingState(direction, since))


def decide(
    signals: Sequence[ReplicaSignals],
    config: AutoscalingConfig,
    current_replicas: int,
    now: float,
    state: AutoscalingState,
    queued_requests: float = 0.0,
    headroom: float = DOWNSCALE_HEADROOM,
) -> ScalingDecision:
    """The replica target given the running replicas' ``signals``.

    ``current_replicas`` is the current *target* (it may include replicas still starting, which
    report no signals yet); ``queued_requests`` are requests waiting upstream of the replicas
    (router/handle queues) and count as ongoing load.
    """
    early = _bounds_or_silence(signals, config, current_replicas, queued_requests)
    if early is not None:
        return early
    overload = _worst_overload(signals, config, queued_requests)
    if overload.ratio > 1.0:
        return _scale_up(overload, len(signals), config, current_replicas, now, state)
    if len(signals) < current_replicas:
        # Replicas still starting report nothing; their share of the load is unknown.
        detail = f"{len(signals)}/{current_replicas} replicas reporting"
        return _hold(current_replicas, current_replicas, "replicas_starting", detail)
    needed = _clamp(_replicas_needed(signals, config, queued_requests, headroom), config)
    if needed < current_replicas:
        detail = f"load fits in {needed} replicas at {headroom:.0%} of targets"
        return _pending(
            "down", current_replicas, needed, config.downscale_delay_s, "down_underloaded", detail, state, now
        )
    return _hold(current_replicas, current_replicas, "steady", overload.detail)


def _bounds_or_silence(
    signals: Sequence[ReplicaSignals], config: AutoscalingConfig, current: int, queued: float
) -> ScalingDecision | None:
    """Decisions that need no signals: outside min/max, scale from zero, nothing reported yet."""
    if current < config.min_replicas:
        return _hold(config.min_replicas, config.min_replicas, "below_min", f"min_replicas {config.min_replicas}")
    if current > config.max_replicas:
        return _hold(config.max_replicas, config.max_replicas, "above_max", f"max_replicas {config.max_replicas}")
    if signals:
        return None
    if current == 0 and queued > 0:
        # Scale from zero at once: a request is waiting for any replica at all.
        target = _clamp(1, config)
        return _hold(target, target, "cold_start", f"{queued:g} requests queued with no replica")
    return _hold(current, current, "no_signals", "no replica has reported signals yet")


def _scale_up(
    overload: _Overload, reporting: int, config: AutoscalingConfig, current: int, now: float, state: AutoscalingState
) -> ScalingDecision:
    # Sized from the replicas that reported: those starting already count in ``current``, so a
    # scale-up in progress is not repeated while the new replicas load their model.
    wanted = reporting + 1 if math.isinf(overload.ratio) else math.ceil(overload.ratio * reporting - _EPS)
    desired = _clamp(max(reporting + 1, wanted), config)
    if desired <= current:
        code = "at_max" if current >= config.max_replicas else "scale_up_in_progress"
        return _hold(current, desired, code, overload.detail)
    return _pending(
        "up", current, desired, config.upscale_delay_s, f"up_{overload.signal}", overload.detail, state, now
    )
