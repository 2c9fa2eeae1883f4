"""The replica's side of a ``models:`` entry, split by consumer: an LLM replica hosts an engine, so it
gets the engine part, the health part, and of the deployment part only the two facts its engine's
start reads and its CPU scheduling policy. This is the one module of the replica layer that reads a
whole ModelConfig."""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.config import ModelConfig
from serve_app.config_engine import EngineConfig
from serve_app.config_model import HealthConfig


@dataclass(frozen=True)
class ReplicaParts:
    engine: EngineConfig
    health: HealthConfig
    # The GPUs the replica's actor holds (a fraction means a shared GPU: engine starts take turns).
    actor_gpus: float
    # How long the multi-GPU pre-flight may take before the engine start fails.
    preflight_timeout_s: float
    # "idle": the replica and its engine's processes run under SCHED_IDLE (serve_app.replica.cpu_policy).
    cpu_scheduling: str = "normal"


def replica_parts(model: ModelConfig) -> ReplicaParts:
    return ReplicaParts(
        engine=model.engine(),
        health=model.health(),
        actor_gpus=model.ray_actor_options.num_gpus,
        preflight_timeout_s=model.placement.preflight_timeout_s,
        cpu_scheduling=model.cpu_scheduling,
    )
