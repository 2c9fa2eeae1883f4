"""What serve_app hands Ray, Ray Serve's own validators accept: every shipped serve config against
Ray Serve's schema, each model's placement (strategy, bundles, actor fits bundle 0) and the
scale-to-zero autoscaling options. Starts nothing; in this tier because it imports Ray (the same
configs' schema and placement checks without Ray are in tests/unit/test_serve_configs.py and
tests/unit/test_placement.py)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from ray.serve._private.config import DeploymentConfig, ReplicaConfig
from ray.serve.config import AutoscalingConfig as RayAutoscalingConfig
from ray.serve.schema import ServeDeploySchema

from serve_app.app import build_app, replica_options, router_actor_options
from serve_app.config import AppConfig, AutoscalingConfig, ModelConfig, load_config
from serve_app.config_nccl import NcclConfig
from serve_app.config_router import ReplicaChoiceConfig
from serve_app.core.placement import load_model_shape, plan_replica_placement
from serve_app.core.replica_choice import RoutingCore
from tests.unit.test_serve_configs import IDS, SERVE_CONFIGS


def ray_accepts(m: ModelConfig, options: dict[str, Any]) -> ReplicaConfig:
    """Ray Serve's own validation of the options: strategy name, bundle shapes, actor fits bundle 0."""
    actor = {"num_cpus": m.ray_actor_options.num_cpus, "num_gpus": m.ray_actor_options.num_gpus}
    return ReplicaConfig.create(object, ray_actor_options=actor, **options)


@pytest.mark.parametrize(("name", "doc"), SERVE_CONFIGS, ids=IDS)
def test_matches_ray_serve_schema(name: str, doc: dict[str, Any]) -> None:
    schema = ServeDeploySchema.model_validate(doc)
    assert schema.applications


@pytest.mark.parametrize(("name", "doc"), SERVE_CONFIGS, ids=IDS)
def test_every_shipped_placement_is_accepted_by_ray(name: str, doc: dict[str, Any]) -> None:
    for app in doc["applications"]:
        for model in load_config(app["args"]).models:
            engine, deployment = model.engine(), model.deployment()
            placement = plan_replica_placement(engine, deployment, load_model_shape(engine, deployment))
            ray_accepts(model, placement.deployment_options())


@pytest.mark.parametrize(
    ("fields", "strategy"),
    [
        ({"shape_preset": "llama-2-13b", "tensor_parallel_size": 4, "placement": {"gpus_per_node": 4}}, "STRICT_PACK"),
        ({"shape_preset": "llama-2-70b", "tensor_parallel_size": 8, "pipeline_parallel_size": 2}, "PACK"),
    ],
)
def test_multi_gpu_placements_are_accepted_by_ray(fields: dict[str, Any], strategy: str) -> None:
    m = ModelConfig.model_validate({"id": "m", "source": "/nonexistent/model"} | fields)
    engine, deployment = m.engine(), m.deployment()
    options = plan_replica_placement(engine, deployment, load_model_shape(engine, deployment)).deployment_options()
    assert ray_accepts(m, options).placement_group_strategy == strategy


def test_scale_to_zero_config_is_accepted_by_ray() -> None:
    to_zero = AutoscalingConfig(min_replicas=0, max_replicas=2)
    options = replica_options(ModelConfig(id="cold", autoscaling=to_zero), ReplicaChoiceConfig(), NcclConfig())
    ray_config = RayAutoscalingConfig(**options["autoscaling_config"])
    assert (ray_config.min_replicas, ray_config.max_replicas) == (0, 2)
    assert ray_config.policy.policy_kwargs["min_replicas"] == 0  # our policy decides the cold start


def test_the_metrics_interval_reaches_ray_through_the_field_ray_still_reads() -> None:
    """Ray 2.60 deprecates AutoscalingConfig.metrics_interval_s for two environment variables, and
    reads only the field: its replicas' and handles' metrics pushers take their period from it, and
    neither module imports the variable meant to replace it. When this fails, Ray reads them: set
    them instead of the field, and drop the warning's named ignore in pyproject.toml."""
    from ray.serve._private import constants, replica, router

    every_second = ModelConfig(id="m", autoscaling=AutoscalingConfig(metrics_interval_s=1))
    options = replica_options(every_second, ReplicaChoiceConfig(), NcclConfig())
    with pytest.warns(DeprecationWarning, match="`metrics_interval_s` field in AutoscalingConfig is deprecated"):
        ray_config = RayAutoscalingConfig(**options["autoscaling_config"])
    assert (ray_config.metrics_interval_s, ray_config.look_back_period_s) == (1, 4)
    for reader, variable in (
        (replica, "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S"),
        (router, "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S"),
    ):
        assert hasattr(constants, variable) and not hasattr(reader, variable), f"{reader.__name__} reads {variable}"


@pytest.mark.parametrize(("name", "doc"), SERVE_CONFIGS, ids=IDS)
def test_request_router_gets_only_replica_choice(name: str, doc: dict[str, Any]) -> None:
    """build_app hands Ray's request router the replica-choice part of ``router:`` alone, as the
    deployment config Ray keeps, and the request router's core takes it as it is."""
    for app_doc in doc["applications"]:
        config = load_config(app_doc["args"])
        replicas = build_app(config)._bound_deployment.init_args[1]
        for model in config.models:
            ray_config = replicas[model.id]._bound_deployment._deployment_config.request_router_config
            assert ray_config.request_router_class == "serve_app.router.replica_choice.PolicyRequestRouter"
            assert ray_config.request_router_kwargs == config.router.replica_choice().model_dump(mode="json")
            assert set(ray_config.request_router_kwargs) == set(ReplicaChoiceConfig.model_fields)
            RoutingCore.from_kwargs(ray_config.request_router_kwargs)


def test_build_app_annotation_is_the_config_model() -> None:
    # Ray Serve validates a config file's args against this annotation before calling build_app.
    assert inspect.signature(build_app).parameters["args"].annotation in (AppConfig, "AppConfig")


def test_router_resources_pin_the_router_replicas() -> None:
    minimal = {"models": [{"id": "m"}]}
    pinned = load_config(minimal | {"router": {"resources": {"router_node": 0.01}}})
    assert router_actor_options(pinned.router.deployment(), {})["resources"] == {"router_node": 0.01}
    assert "resources" not in router_actor_options(load_config(minimal).router.deployment(), {})


def test_health_check_period_reaches_serve() -> None:
    """The model's health-check period becomes Serve's (how soon a hung engine is replaced)."""
    quick = ModelConfig(id="m", health_check_period_s=3)
    options = replica_options(quick, ReplicaChoiceConfig(), NcclConfig())
    deployment = DeploymentConfig(
        health_check_period_s=options["health_check_period_s"],
        health_check_timeout_s=options["health_check_timeout_s"],
    )
    assert deployment.health_check_period_s == 3
    assert replica_options(ModelConfig(id="m"), ReplicaChoiceConfig(), NcclConfig())["health_check_period_s"] == 10
