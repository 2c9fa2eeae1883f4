from __future__ import annotations

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

CONFIG = AutoscalingConfig(
    min_replicas=1,
    max_replicas=4,
    target_ongoing_requests=8,
    target_waiting_requests=2,
    max_kv_cache_usage=0.85,
    upscale_delay_s=10,
    downscale_delay_s=60,
)


class Autoscaler:
    """Feeds decide() its own state back, as Ray's controller does with policy_state."""

    def __init__(self, config: AutoscalingConfig = CONFIG, replicas: int = 1) -> None:
        self.config = config
        self.replicas = replicas
        self.state = AutoscalingState()

    def tick(self, now: float, *signals: ReplicaSignals, queued: float = 0.0) -> ScalingDecision:
        decision = decide(list(signals), self.config, self.replicas, now, self.state, queued_requests=queued)
        self.state = decision.state
        self.replicas = decision.target_replicas
        return decision


def busy(ongoing: float = 12, waiting: float = 0, kv: float = 0.2) -> ReplicaSignals:
    return ReplicaSignals(ongoing, waiting, kv)


def test_scales_1_to_2_only_after_the_upscale_delay() -> None:
    scaler = Autoscaler()
    first = scaler.tick(0.0, busy())
    assert (first.target_replicas, first.desired_replicas) == (1, 2)
    assert first.reason == "up_ongoing_requests_pending"
    assert scaler.tick(9.9, busy()).target_replicas == 1
    done = scaler.tick(10.0, busy())
    assert done.target_replicas == 2
    assert done.reason == "up_ongoing_requests"
    assert "1->2" in done.detail


def test_upscale_timer_restarts_when_load_dips() -> None:
    scaler = Autoscaler()
    scaler.tick(0.0, busy())
    assert scaler.tick(5.0, busy(ongoing=4)).reason == "steady"
    assert scaler.tick(10.0, busy()).target_replicas == 1
    assert scaler.tick(20.0, busy()).target_replicas == 2


def test_scales_back_to_1_after_the_downscale_delay() -> None:
    scaler = Autoscaler(replicas=2)
    quiet = (busy(ongoing=2, kv=0.1), busy(ongoing=1, kv=0.1))
    first = scaler.tick(100.0, *quiet)
    assert (first.target_replicas, first.desired_replicas, first.reason) == (2, 1, "down_underloaded_pending")
    assert scaler.tick(159.0, *quiet).target_replicas == 2
    assert scaler.tick(160.0, *quiet).target_replicas == 1


def test_no_downscale_when_the_load_would_not_fit_comfortably() -> None:
    scaler = Autoscaler(replicas=2)
    # 8 ongoing in total is 100% of one replica's target: over the 80% headroom.
    for t in (0.0, 100.0, 1000.0):
        decision = scaler.tick(t, busy(ongoing=4), busy(ongoing=4))
        assert (decision.target_replicas, decision.reason) == (2, "steady")


def test_kv_cache_usage_over_threshold_scales_up() -> None:
    scaler = Autoscaler(AutoscalingConfig(min_replicas=1, max_replicas=4, max_kv_cache_usage=0.8, upscale_delay_s=0))
    decision = scaler.tick(0.0, busy(ongoing=1, kv=0.95))
    assert decision.target_replicas == 2
    assert decision.reason == "up_kv_cache_usage"


def test_waiting_requests_over_target_scale_up_by_the_worst_ratio() -> None:
    config = CONFIG.model_copy(update={"upscale_delay_s": 0})
    decision = Autoscaler(config, replicas=2).tick(0.0, busy(ongoing=4, waiting=6), busy(ongoing=4, waiting=6))
    # 6 waiting per replica vs target 2: three times the capacity.
    assert (decision.target_replicas, decision.reason) == (4, "up_waiting_requests")


def test_clamps_at_max_and_min() -> None:
    config = CONFIG.model_copy(update={"upscale_delay_s": 0, "min_replicas": 2})
    assert Autoscaler(config, replicas=2).tick(0.0, busy(100), busy(100)).target_replicas == 4
    at_max = Autoscaler(config, replicas=4).tick(0.0, *(busy(100) for _ in range(4)))
    assert (at_max.target_replicas, at_max.reason) == (4, "at_max")
    idle = Autoscaler(config, replicas=2)
    for t in (0.0, 1000.0):
        assert idle.tick(t, busy(0, kv=0), busy(0, kv=0)).target_replicas == 2
    below = Autoscaler(config, replicas=1).tick(0.0, busy(0))
    assert (below.target_replicas, below.reason) == (2, "below_min")


def test_starting_replicas_are_not_scaled_up_again_or_down() -> None:
    scaler = Autoscaler(CONFIG.model_copy(update={"upscale_delay_s": 0, "downscale_delay_s": 0}), replicas=2)
    # One of two replicas reports 1.5x target: the second, still loading, already covers that.
    assert scaler.tick(0.0, busy(ongoing=12)).reason == "scale_up_in_progress"
    assert scaler.tick(1.0, busy(ongoing=0)).reason == "replicas_starting"
    assert scaler.replicas == 2


def test_queued_requests_count_as_load_and_wake_from_zero() -> None:
    scaler = Autoscaler(CONFIG.model_copy(update={"upscale_delay_s": 0}))
    assert scaler.tick(0.0, busy(ongoing=6), queued=10).target_replicas == 2
    from_zero = Autoscaler(CONFIG.model_copy(update={"min_replicas": 0}), replicas=0)
    assert from_zero.tick(0.0).reason == "no_signals"
    assert (from_zero.tick(1.0, queued=3).target_replicas, from_zero.replicas) == (1, 1)


def test_state_round_trips_through_a_plain_dict() -> None:
    state = AutoscalingState("down", 12.5)
    assert AutoscalingState.from_dict(state.to_dict() | {"ray_internal": 3}) == state
    assert AutoscalingState.from_dict({"serve_app_pending_direction": "sideways"}) == AutoscalingState()
    assert ReplicaSignals(3, 1, 0.5).as_stats() == {
        STAT_ONGOING_REQUESTS: 3.0,
        STAT_WAITING_REQUESTS: 1.0,
        STAT_KV_CACHE_USAGE: 0.5,
    }
