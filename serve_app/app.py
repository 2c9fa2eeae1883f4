"""``build_app(config) -> Application``: the one ``import_path`` target (``serve_app.app:build_app``).

Ray Serve validates the config file's ``args`` against :class:`AppConfig` (the type annotation)
before calling this; :func:`serve_app.validate.validate_app` then checks what the schema cannot
(quantization gate, adapters, placement), the same pipeline ``serve-app check`` runs.
"""

from __future__ import annotations

import re
from typing import Any

from ray import serve
from ray.serve import Application

from serve_app.config import AppConfig, AutoscalingConfig, ModelConfig, ServerConfig
from serve_app.config_nccl import NcclConfig
from serve_app.config_router import ReplicaChoiceConfig, RouterDeploymentConfig
from serve_app.core.placement import load_model_shape, plan_replica_placement
from serve_app.engine.vllm_engine import engine_env_vars
from serve_app.replica.deployment import LLMReplica
from serve_app.replica.parts import replica_parts
from serve_app.router.deployment import RouterDeployment
from serve_app.validate import validate_app

ROUTER_DEPLOYMENT = "router"


def replica_deployment_name(model: ModelConfig) -> str:
    return "llm-" + re.sub(r"[^A-Za-z0-9_-]+", "-", model.id).strip("-")


def _autoscaling(a: AutoscalingConfig | None) -> dict[str, Any] | None:
    """Ray Serve autoscaling driven by our engine-signal policy (serve_app.core.autoscaling)."""
    if a is None:
        return None
    return {
        "min_replicas": a.min_replicas,
        "max_replicas": a.max_replicas,
        "initial_replicas": a.initial_replicas,
        "target_ongoing_requests": a.target_ongoing_requests,
        # Deprecated in Ray 2.60 for RAY_SERVE_{REPLICA,HANDLE}_AUTOSCALING_METRIC_PUSH_INTERVAL_S, which
        # it does not read yet: the field is still what sets the replicas' and handles' push period
        # (tests/integration/test_ray_accepts.py fails once Ray reads the variables).
        "metrics_interval_s": a.metrics_interval_s,
        "look_back_period_s": max(2 * a.metrics_interval_s, 4.0),
        # Ray applies its own delays after a custom policy; ours travel in policy_kwargs, so
        # Ray's must be zero or the two would add up.
        "upscale_delay_s": 0,
        "downscale_delay_s": 0,
        "policy": {
            "policy_function": "serve_app.replica.autoscaling_policy.EngineSignalPolicy",
            "policy_kwargs": a.model_dump(mode="json"),
        },
    }


def request_router_config(replica_choice: ReplicaChoiceConfig) -> dict[str, Any]:
    """Replica choice by our policies (pow2 on tokens, prefix affinity, round robin), inside Ray
    Serve's own request router so that its replica tracking, back-pressure and retries stay in
    place. Only the replica-choice part of ``router:`` travels to it."""
    return {
        "request_router_class": "serve_app.router.replica_choice.PolicyRequestRouter",
        "request_router_kwargs": replica_choice.model_dump(mode="json"),
        "request_routing_stats_period_s": 2.0,
    }


def ray_serve_env_vars(server: ServerConfig) -> dict[str, str]:
    """Ray Serve's own per-process settings (read by Ray when a replica process starts)."""
    return {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1" if server.ray_serve_throughput_optimized else "0",
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1" if server.ray_serve_direct_ingress else "0",
    }


def replica_options(
    model: ModelConfig,
    replica_choice: ReplicaChoiceConfig,
    nccl: NcclConfig,
    serve_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    actor = model.ray_actor_options
    engine, deployment = model.engine(), model.deployment()
    placement = plan_replica_placement(engine, deployment, load_model_shape(engine, deployment))
    # A multi-GPU replica's GPUs are its placement group's worker bundles, not the actor's own.
    num_gpus = 0 if placement.strategy is not None else actor.num_gpus
    ray_actor_options: dict[str, Any] = {"num_cpus": actor.num_cpus, "num_gpus": num_gpus}
    if actor.memory:
        ray_actor_options["memory"] = actor.memory
    if actor.resources:
        ray_actor_options["resources"] = dict(actor.resources)
    # the model's own values win
    env_vars = (serve_env or {}) | nccl.env_vars() | engine_env_vars(engine) | dict(actor.env_vars)
    if env_vars:
        ray_actor_options["runtime_env"] = {"env_vars": env_vars}
    options: dict[str, Any] = {
        "name": replica_deployment_name(model),
        "ray_actor_options": ray_actor_options,
        "max_ongoing_requests": model.max_ongoing_requests,
        "health_check_period_s": model.health_check_period_s,
        "health_check_timeout_s": 30,
        "graceful_shutdown_wait_loop_s": 2,
        "graceful_shutdown_timeout_s": 120,
        "request_router_config": request_router_config(replica_choice),
        **placement.deployment_options(),
    }
    autoscaling = _autoscaling(model.autoscaling)
    if autoscaling is None:
        options["num_replicas"] = model.num_replicas
    else:
        options["autoscaling_config"] = autoscaling
    return options


def router_actor_options(router: RouterDeploymentConfig, serve_env: dict[str, str]) -> dict[str, Any]:
    options: dict[str, Any] = {"num_cpus": router.num_cpus, "runtime_env": {"env_vars": serve_env}}
    if router.resources:
        options["resources"] = dict(router.resources)
    return options


def build_app(args: AppConfig) -> Application:
    config = validate_app(args)
    serve_env = ray_serve_env_vars(config.server)
    # serve.deployment() then the class: Ray annotates only that (decorator) form's result.
    replicas = {
        m.id: serve.deployment()(LLMReplica)
        .options(**replica_options(m, config.router.replica_choice(), config.nccl, serve_env))
        .bind(replica_parts(m), config.model_cache_dir, export_metrics=True, json_logs=True)
        for m in config.models
    }
    size = config.router.deployment()
    router = serve.deployment()(serve.ingress()(RouterDeployment)).options(
        name=ROUTER_DEPLOYMENT,
        num_replicas=size.num_replicas,
        max_ongoing_requests=size.max_ongoing_requests,
        ray_actor_options=router_actor_options(size, serve_env),
    )
    return router.bind(config, replicas)
