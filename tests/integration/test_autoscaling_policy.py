"""EngineSignalPolicy, the Ray Serve autoscaling policy over serve_app.core.autoscaling, through
Ray's own wrapper for custom policies (no cluster needed). In this tier because it imports Ray;
the decisions themselves are unit-tested in tests/unit/test_autoscaling.py."""

from __future__ import annotations

from typing import Any

import pytest

from serve_app.config import AutoscalingConfig
from serve_app.core.autoscaling import ReplicaSignals
from tests.unit.test_autoscaling import CONFIG


def _ray_policy(config: AutoscalingConfig) -> Any:
    from ray.serve._private.autoscaling_state import _resolve_policy_callable
    from ray.serve.autoscaling_policy import _apply_autoscaling_config
    from ray.serve.config import AutoscalingConfig as RayAutoscalingConfig

    ray_config = RayAutoscalingConfig(
        min_replicas=config.min_replicas,
        max_replicas=config.max_replicas,
        upscale_delay_s=0,
        downscale_delay_s=0,
        policy={
            "policy_function": "serve_app.replica.autoscaling_policy.EngineSignalPolicy",
            "policy_kwargs": config.model_dump(mode="json"),
        },
    )
    return _apply_autoscaling_config(_resolve_policy_callable(ray_config.policy)), ray_config


def _context(ray_config: Any, replicas: int, target: int, now: float, state: dict, metrics: dict) -> Any:
    from ray.serve._private.common import DeploymentID, ReplicaID
    from ray.serve.config import AutoscalingContext

    deployment = DeploymentID(name="llm-test", app_name="app")
    ids = [ReplicaID(f"r{i}", deployment) for i in range(replicas)]
    per_replica = {key: {rid: value for rid in ids} for key, value in metrics.items()}
    return AutoscalingContext(
        deployment_id=deployment,
        deployment_name="llm-test",
        app_name="app",
        current_num_replicas=replicas,
        target_num_replicas=target,
        running_replicas=ids,
        total_num_requests=0.0,
        total_queued_requests=0.0,
        aggregated_metrics=per_replica,
        raw_metrics={},
        capacity_adjusted_min_replicas=ray_config.min_replicas,
        capacity_adjusted_max_replicas=ray_config.max_replicas,
        policy_state=state,
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=now,
        config=ray_config,
    )


def test_ray_policy_applies_our_delay_once_through_rays_wrapper() -> None:
    policy, ray_config = _ray_policy(CONFIG)
    hot = ReplicaSignals(ongoing_requests=3, kv_cache_usage=0.97).as_stats()
    target, state = policy(_context(ray_config, 1, 1, 0.0, {}, hot))
    assert target == 1
    target, state = policy(_context(ray_config, 1, 1, 9.0, state, hot))
    assert target == 1
    target, state = policy(_context(ray_config, 1, 1, 10.0, state, hot))
    assert target == 2


def test_ray_policy_falls_back_to_rays_running_request_count() -> None:
    policy, ray_config = _ray_policy(CONFIG.model_copy(update={"upscale_delay_s": 0}))
    target, _ = policy(_context(ray_config, 2, 2, 0.0, {}, {"running_requests": 20.0}))
    assert target == 4  # 20 per replica vs target 8 -> ceil(2.5 * 2) = 5, clamped to 4


@pytest.mark.parametrize("bad", [{"min_replicas": 3, "max_replicas": 2}, {"unknown": 1}])
def test_ray_policy_validates_its_kwargs(bad: dict) -> None:
    from pydantic import ValidationError

    from serve_app.replica.autoscaling_policy import EngineSignalPolicy

    with pytest.raises(ValidationError):
        EngineSignalPolicy(**bad)


def test_ray_policy_records_each_decision() -> None:
    from serve_app.observability import InMemoryMetricsBackend, ServeAppMetrics
    from serve_app.replica.autoscaling_policy import EngineSignalPolicy

    store = InMemoryMetricsBackend()
    policy = EngineSignalPolicy(**CONFIG.model_dump(mode="json"))
    policy.metrics = ServeAppMetrics(store)
    _, ray_config = _ray_policy(CONFIG)
    hot = ReplicaSignals(ongoing_requests=20).as_stats()
    target, state = policy(_context(ray_config, 1, 1, 0.0, {}, hot))
    policy(_context(ray_config, 1, 1, 1.0, state, hot))
    assert target == 1  # the upscale delay holds the target ...
    assert store.gauge("serve_app_autoscaling_desired_replicas", deployment="llm-test") == 3  # ... not the wish
    assert store.gauge("serve_app_autoscaling_target_replicas", deployment="llm-test") == 1
    assert store.gauge("serve_app_replicas", deployment="llm-test") == 1
    reason = policy.last_decision.reason
    assert store.counter("serve_app_autoscaling_decisions", deployment="llm-test", reason=reason) == 2
