"""One entry of ``models:`` in a serve config, split by the consumer of each part.

Users write one flat entry; each consumer receives only its part:

* :class:`~serve_app.config_engine.EngineConfig`: the checkpoint and the vLLM engine and OpenAI
  server over it (``serve_app.engine.vllm_engine``; the quantization gate).
* :class:`DeploymentConfig`: the model's Ray Serve deployment: its replicas, what each asks of
  Ray, where a multi-GPU replica's workers go (``serve_app.app``; ``serve_app.core.placement``,
  with the engine part's parallel layout).
* :class:`LimitsConfig`: what the router allows and assumes per request (the ingress and the
  security guard, through ``serve_app.router.models.RoutedModel``).
* :class:`HealthConfig`: the readiness probe and the checks that replace a hung replica
  (``serve_app.router.readiness``, ``serve_app.replica.deployment``).

On the router's side ``serve_app.router.models`` does the split, once per router replica.

``batching`` (the router's dynamic batching) is its own section already. :class:`ModelConfig` is
all of it flat, so a key keeps its path (``models[0].max_n``) in the file and in validation errors;
the checks that span parts (quantization against the replica's GPUs) live there. Pure: no Ray, no I/O.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serve_app.config_engine import EngineConfig
from serve_app.config_parts import part_of
from serve_app.models.shapes import PRESETS as SHAPE_PRESETS
from serve_app.quantize.onload import QuantizationSetting, quantization_problem


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AutoscalingConfig(_Strict):
    """Replica autoscaling driven by engine signals (see serve_app.core.autoscaling)."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    initial_replicas: int | None = Field(None, ge=0)
    target_ongoing_requests: float = Field(8.0, gt=0)
    target_waiting_requests: float = Field(2.0, ge=0)
    max_kv_cache_usage: float = Field(0.85, gt=0, le=1)
    upscale_delay_s: float = Field(10.0, ge=0)
    downscale_delay_s: float = Field(60.0, ge=0)
    # How often replicas and the router's handles push their autoscaling metrics to Serve's controller
    # (Ray's AutoscalingConfig.metrics_interval_s); the policy sees them averaged over max(2 x this, 4 s).
    metrics_interval_s: float = Field(2.0, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        if self.initial_replicas is not None and not (self.min_replicas <= self.initial_replicas <= self.max_replicas):
            raise ValueError("initial_replicas must lie between min_replicas and max_replicas")
        return self


class BatchingConfig(_Strict):
    """Router-side dynamic batching. A zero timeout sends each request at once (vLLM batches
    continuously inside the engine); embeddings gain most from a small positive timeout."""

    max_batch_size: int = Field(1, ge=1, le=1024)
    batch_timeout_ms: float = Field(0.0, ge=0, le=10_000)
    length_bins: list[int] = Field(default_factory=list)
    # A request that arrives while none of the model's batches is in flight on this router goes
    # at once: batches then form only under load, and a lone request never waits for the timeout.
    at_once_when_idle: bool = False

    @field_validator("length_bins")
    @classmethod
    def _sorted_bins(cls, bins: list[int]) -> list[int]:
        if any(b <= 0 for b in bins) or bins != sorted(set(bins)):
            raise ValueError("length_bins must be strictly increasing positive token counts")
        return bins


class ActorOptions(_Strict):
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    memory: int | None = Field(None, ge=0)
    resources: dict[str, float] = Field(default_factory=dict)
    env_vars: dict[str, str] = Field(default_factory=dict)


class PlacementConfig(_Strict):
    """Where a multi-GPU replica's workers go (see serve_app.core.placement)."""

    gpus_per_node: int = Field(8, ge=1, le=64)
    # Used only when tensor x pipeline parallel GPUs exceed one node; one node is always STRICT_PACK.
    multi_node_strategy: Literal["PACK", "SPREAD"] = "PACK"
    cpus_per_worker: float = Field(1.0, ge=0)
    # The all-reduce check across a multi-GPU replica's workers before it takes traffic.
    preflight_timeout_s: float = Field(60.0, gt=0)


class DeploymentConfig(_Strict):
    """The model's replicas and what each asks of Ray."""

    placement: PlacementConfig = Field(default_factory=PlacementConfig)
    # A known architecture (serve_app.models.shapes.PRESETS) that gives the model's head
    # counts when its source folder is not readable where the app is built (e.g. on the Ray head).
    shape_preset: str | None = None
    num_replicas: int = Field(1, ge=1)
    autoscaling: AutoscalingConfig | None = None
    max_ongoing_requests: int = Field(256, ge=1)
    ray_actor_options: ActorOptions = Field(default_factory=ActorOptions)
    # The CPU scheduling policy of each replica's process and its engine's processes. "idle"
    # (Linux SCHED_IDLE): they run only on CPU time no normal process wants, so a batch pool
    # (flow_control.batch.model_pools) that shares a host's cores with an interactive pool
    # yields them at once instead of taking a weighted share as even nice 19 does.
    cpu_scheduling: Literal["normal", "idle"] = "normal"

    @field_validator("shape_preset")
    @classmethod
    def _known_preset(cls, preset: str | None) -> str | None:
        if preset is not None and preset not in SHAPE_PRESETS:
            raise ValueError(f"unknown shape_preset {preset!r}; known: {', '.join(SHAPE_PRESETS)}")
        return preset


class LimitsConfig(_Strict):
    """Per-request caps the router enforces (a 400 past them) and the length it assumes."""

    # The completion length admission and replica choice assume for a request that names none
    # (vLLM itself then generates up to the context limit).
    default_max_tokens: int = Field(256, ge=1)
    max_tokens_limit: int = Field(4096, ge=1)
    max_n: int = Field(8, ge=1, le=128)

    @model_validator(mode="after")
    def _default_within_limit(self) -> LimitsConfig:
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError("default_max_tokens exceeds max_tokens_limit")
        return self


class HealthConfig(_Strict):
    """When a replica counts as ready, and when as hung (Serve then replaces it)."""

    readiness_prompt: str = Field("What is the capital of France?", min_length=1)
    # A substring the readiness answer must contain (a golden check), e.g. "Paris" for the embedded model.
    readiness_expect: str | None = None
    readiness_timeout_s: float = Field(30.0, gt=0)
    # A replica whose engine produces nothing for this long (requests in flight), or cannot make
    # one token in this time (idle), fails Serve's health check and is replaced: a hung engine
    # (a step that never returns) does not fail vLLM's own check, which only sees a dead one.
    engine_stall_timeout_s: float = Field(60.0, gt=0)
    # How often Serve runs that health check; a replica is replaced after 3 failures in a row, so a
    # hung engine is found within about engine_stall_timeout_s + 3 periods.
    health_check_period_s: float = Field(10.0, gt=0)


# One ``models:`` entry: every part's fields, flat, and the router's batching section. (No
# docstring: it would become a description in the JSON schema, which stays as before the split.)
# Bases listed last-first: pydantic collects fields from the last base on (engine, deployment,
# limits, health, then batching).
class ModelConfig(HealthConfig, LimitsConfig, DeploymentConfig, EngineConfig):
    batching: BatchingConfig = Field(default_factory=BatchingConfig)

    @model_validator(mode="after")
    def _quantization_combination(self) -> ModelConfig:
        setting = QuantizationSetting(
            quantization=self.quantization,
            dtype=self.dtype,
            num_gpus=self.replica_gpus,
            source=self.source,
        )
        problem = quantization_problem(setting)
        if problem:
            raise ValueError(f"quantization: {problem}")
        return self

    @property
    def replica_gpus(self) -> float:
        """The GPUs one replica uses: the actor's own, or for a multi-GPU replica its placement
        group's (they are not on the actor)."""
        return self.ray_actor_options.num_gpus if self.gpus_per_replica == 1 else float(self.gpus_per_replica)

    def engine(self) -> EngineConfig:
        return part_of(self, EngineConfig)

    def deployment(self) -> DeploymentConfig:
        return part_of(self, DeploymentConfig)

    def limits(self) -> LimitsConfig:
        return part_of(self, LimitsConfig)

    def health(self) -> HealthConfig:
        return part_of(self, HealthConfig)
