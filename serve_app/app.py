"""``build_app(config) -> Application``: the one ``import_path`` target (``serve_app.app:build_app``).

Ray Serve validates the config file's ``args`` against :class:`AppConfig` (the type annotation)
before calling this, so ``serve run``, ``serve deploy`` and Python share one validation.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application

from serve_app.config import (
    AppConfig,
    ConfigError,
    ModelConfig,
    RouterConfig,
    ServerConfig,
    load_config,
)
from serve_app.config_nccl import NcclConfig
from serve_app.core.placement import load_model_shape, plan_replica_placement
from serve_app.engine.vllm_engine import engine_env_vars
from serve_app.models.embedded import EMBEDDED_PREFIX, resolve_source
from serve_app.models.lora_adapters import adapter_problem
from serve_app.quantize.gate import check_deployable
from serve_app.replica.deployment import LLMReplica
from serve_app.router.deployment import RouterDeployment

ROUTER_DEPLOYMENT = "router"


def replica_deployment_name(model: ModelConfig) -> str:
    return "llm-" + re.sub(r"[^A-Za-z0-9_-]+", "-", model.id).strip("-")


def _autoscaling(model: ModelConfig) -> dict[str, Any] | None:
    """Ray Serve autoscaling driven by our engine-signal policy (serve_app.core.autoscaling)."""
    a = model.autoscaling
    if a is None:
        return None
    return {
        "min_replicas": a.min_replicas,
        "max_replicas": a.max_replicas,
        "initial_replicas": a.initial_replicas,
        "target_ongoing_requests": a.target_ongoing_requests,
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


def _request_router(router: RouterConfig) -> dict[str, Any]:
    """Replica choice by our policies (pow2 on tokens, prefix affinity, round robin), inside Ray
    Serve's own router so that its replica tracking, back-pressure and retries stay in place."""
    return {
        "request_router_class": "serve_app.router.replica_router.PolicyRequestRouter",
        "request_router_kwargs": router.model_dump(mode="json"),
        "request_routing_stats_period_s": 2.0,
    }


def ray_serve_env_vars(server: ServerConfig) -> dict[str, str]:
    """Ray Serve's own per-process settings (read by Ray when a replica process starts)."""
    return {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1" if server.ray_serve_throughput_optimized else "0",
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1" if server.ray_serve_direct_ingress else "0",
    }


def replica_options(
    model: ModelConfig, router: RouterConfig, nccl: NcclConfig, serve_env: dict[str, str] | None = None
) -> dict[str, Any]:
    actor = model.ray_actor_options
    placement = plan_replica_placement(model, load_model_shape(model))
    # A multi-GPU replica's GPUs are its placement group's worker bundles, not the actor's own.
    num_gpus = 0 if placement.strategy is not None else actor.num_gpus
    ray_actor_options: dict[str, Any] = {"num_cpus": actor.num_cpus, "num_gpus": num_gpus}
    if actor.memory:
        ray_actor_options["memory"] = actor.memory
    if actor.resources:
        ray_actor_options["resources"] = dict(actor.resources)
    # the model's own values win
    env_vars = (serve_env or {}) | nccl.env_vars() | engine_env_vars(model) | dict(actor.env_vars)
    if env_vars:
        ray_actor_options["runtime_env"] = {"env_vars": env_vars}
    options: dict[str, Any] = {
        "name": replica_deployment_name(model),
        "ray_actor_options": ray_actor_options,
        "max_ongoing_requests": model.max_ongoing_requests,
        "health_check_period_s": 10,
        "health_check_timeout_s": 30,
        "graceful_shutdown_wait_loop_s": 2,
        "graceful_shutdown_timeout_s": 120,
        "request_router_config": _request_router(router),
        **placement.deployment_options(),
    }
    autoscaling = _autoscaling(model)
    if autoscaling is None:
        options["num_replicas"] = model.num_replicas
    else:
        options["autoscaling_config"] = autoscaling
    return options


def check_quantization_gates(config: AppConfig) -> None:
    """Refuse quantized checkpoints without a passing evaluation before anything is deployed
    (serve_app.quantize.gate). Folders not readable here pass; each replica checks again on load."""
    for model in config.models:
        if not model.source.startswith(EMBEDDED_PREFIX):
            check_deployable(model, Path(model.source).expanduser())


def check_adapters(config: AppConfig) -> None:
    """Refuse static LoRA adapters that cannot be served before anything is deployed: a missing
    folder, a rank above ``max_lora_rank``, weights that do not fit the base (where its folder is
    readable here). Embedded adapters are made on the replica when missing; it checks every one again."""
    for i, model in enumerate(config.models):
        if model.lora is None:
            continue
        base = resolve_source(model.source, Path(config.model_cache_dir) if config.model_cache_dir else None, False)
        for j, adapter in enumerate(model.lora.adapters):
            if adapter.embedded_name is not None:
                continue
            problem = adapter_problem(Path(adapter.path).expanduser(), model.lora.max_lora_rank, base)
            if problem:
                raise ConfigError(f"invalid serve_app config: models[{i}].lora.adapters[{j}]: {problem}")


def build_app(args: AppConfig) -> Application:
    config = load_config(args) if not isinstance(args, AppConfig) else args
    check_quantization_gates(config)
    check_adapters(config)
    serve_env = ray_serve_env_vars(config.server)
    replicas = {
        m.id: serve.deployment(LLMReplica)
        .options(**replica_options(m, config.router, config.nccl, serve_env))
        .bind(m, config.model_cache_dir, export_metrics=True, json_logs=True)
        for m in config.models
    }
    router = serve.deployment(serve.ingress()(RouterDeployment)).options(
        name=ROUTER_DEPLOYMENT,
        num_replicas=config.router.num_replicas,
        max_ongoing_requests=config.router.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.router.num_cpus, "runtime_env": {"env_vars": serve_env}},
    )
    return router.bind(config, replicas)
