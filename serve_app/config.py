"""Typed application configuration.

The Ray Serve config file's ``args`` block is exactly :class:`AppConfig`, so ``serve run``,
``serve deploy`` and Python callers share one validation. Validation is pure: it reads no
files, starts nothing and imports neither Ray nor vLLM.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from serve_app.config_lora import LoraConfig, lora_problem
from serve_app.config_nccl import NcclConfig
from serve_app.config_router import RouterConfig
from serve_app.config_tenants import FlowControlConfig
from serve_app.errors import ServeAppError
from serve_app.models.embedded import EMBEDDED_MODELS, EMBEDDED_PREFIX, SMOLLM2_SOURCE
from serve_app.models.shapes import PRESETS as SHAPE_PRESETS
from serve_app.quantize.onload import QuantizationSetting, quantization_problem

# Options our typed fields own; passing them again through engine_options would be ambiguous.
_TYPED_ENGINE_FIELDS = frozenset(
    {
        "model",
        "served_model_name",
        "dtype",
        "quantization",
        "kv_cache_dtype",
        "max_model_len",
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "enforce_eager",
        "seed",
        # models[].lora owns these
        "enable_lora",
        "max_loras",
        "max_lora_rank",
        "max_cpu_loras",
    }
)


class ConfigError(ServeAppError, ValueError):
    """A configuration that cannot be served; the message names the offending key path."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AutoscalingConfig(StrictModel):
    """Replica autoscaling driven by engine signals (see serve_app.core.autoscaling)."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    initial_replicas: int | None = Field(None, ge=0)
    target_ongoing_requests: float = Field(8.0, gt=0)
    target_waiting_requests: float = Field(2.0, ge=0)
    max_kv_cache_usage: float = Field(0.85, gt=0, le=1)
    upscale_delay_s: float = Field(10.0, ge=0)
    downscale_delay_s: float = Field(60.0, ge=0)
    metrics_interval_s: float = Field(2.0, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        if self.initial_replicas is not None and not (self.min_replicas <= self.initial_replicas <= self.max_replicas):
            raise ValueError("initial_replicas must lie between min_replicas and max_replicas")
        return self


class BatchingConfig(StrictModel):
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


class ActorOptions(StrictModel):
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    memory: int | None = Field(None, ge=0)
    resources: dict[str, float] = Field(default_factory=dict)
    env_vars: dict[str, str] = Field(default_factory=dict)


class PlacementConfig(StrictModel):
    """Where a multi-GPU replica's workers go (see serve_app.core.placement)."""

    gpus_per_node: int = Field(8, ge=1, le=64)
    # Used only when tensor x pipeline parallel GPUs exceed one node; one node is always STRICT_PACK.
    multi_node_strategy: Literal["PACK", "SPREAD"] = "PACK"
    cpus_per_worker: float = Field(1.0, ge=0)
    # The all-reduce check across a multi-GPU replica's workers before it takes traffic.
    preflight_timeout_s: float = Field(60.0, gt=0)


class OpenAIServerConfig(StrictModel):
    """vLLM's OpenAI server over this model's engine: ``vllm serve``'s frontend flags, typed where
    they are common, any other one by name in ``options`` (checked by vLLM's parser at start)."""

    # More names clients may send as "model" (``--served-model-name`` after the model's id).
    served_model_aliases: list[str] = Field(default_factory=list)
    chat_template: str | None = None
    tool_call_parser: str | None = None
    enable_auto_tool_choice: bool = False
    reasoning_parser: str | None = None
    # e.g. {"max_log_len": 100, "enable_prompt_tokens_details": true}
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _auto_tools_need_parser(self) -> OpenAIServerConfig:
        if self.enable_auto_tool_choice and not self.tool_call_parser:
            raise ValueError("enable_auto_tool_choice needs tool_call_parser")
        return self

    @field_validator("options")
    @classmethod
    def _no_typed_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        owned = {"model", "served_model_name", "host", "port", "api_key", "lora_modules"} | set(cls.model_fields)
        repeated = sorted(owned & {k.replace("-", "_") for k in options})
        if repeated:
            raise ValueError(f"options repeats {repeated}: set them as typed fields (or not at all)")
        return options


class ModelConfig(StrictModel):
    id: str = Field(..., min_length=1, max_length=256, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    source: str = SMOLLM2_SOURCE
    task: Literal["generate", "embed"] = "generate"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    quantization: str | None = None
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = "auto"
    max_model_len: int | None = Field(2048, ge=16)
    tensor_parallel_size: int = Field(1, ge=1, le=64)
    pipeline_parallel_size: int = Field(1, ge=1, le=64)
    placement: PlacementConfig = Field(default_factory=PlacementConfig)
    # A known architecture (serve_app.models.shapes.PRESETS) that gives the model's head
    # counts when its source folder is not readable where the app is built (e.g. on the Ray head).
    shape_preset: str | None = None
    enforce_eager: bool = False
    seed: int = 0
    engine_options: dict[str, Any] = Field(default_factory=dict)
    openai_server: OpenAIServerConfig = Field(default_factory=OpenAIServerConfig)
    # LoRA adapters served on this base (serve_app.config_lora); None: no LoRA support in the engine.
    lora: LoraConfig | None = None
    num_replicas: int = Field(1, ge=1)
    autoscaling: AutoscalingConfig | None = None
    max_ongoing_requests: int = Field(256, ge=1)
    ray_actor_options: ActorOptions = Field(default_factory=ActorOptions)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    # The completion length admission and replica choice assume for a request that names none
    # (vLLM itself then generates up to the context limit).
    default_max_tokens: int = Field(256, ge=1)
    max_tokens_limit: int = Field(4096, ge=1)
    max_n: int = Field(8, ge=1, le=128)
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
    # Serve a quantized checkpoint even without a passing evaluation report (see serve_app.quantize.gate).
    allow_ungated: bool = False

    @field_validator("source")
    @classmethod
    def _known_embedded(cls, source: str) -> str:
        if source.startswith(EMBEDDED_PREFIX) and source[len(EMBEDDED_PREFIX) :] not in EMBEDDED_MODELS:
            raise ValueError(f"unknown embedded model {source!r}; known: {', '.join(EMBEDDED_MODELS)}")
        return source

    @field_validator("shape_preset")
    @classmethod
    def _known_preset(cls, preset: str | None) -> str | None:
        if preset is not None and preset not in SHAPE_PRESETS:
            raise ValueError(f"unknown shape_preset {preset!r}; known: {', '.join(SHAPE_PRESETS)}")
        return preset

    @field_validator("engine_options")
    @classmethod
    def _no_shadowed_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        shadowed = sorted(_TYPED_ENGINE_FIELDS & options.keys())
        if shadowed:
            raise ValueError(f"engine_options repeats typed field(s) {shadowed}; set them on the model instead")
        return options

    @model_validator(mode="after")
    def _limits(self) -> ModelConfig:
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError("default_max_tokens exceeds max_tokens_limit")
        return self

    @model_validator(mode="after")
    def _lora_combination(self) -> ModelConfig:
        if self.lora is not None:
            names = [self.id, *self.openai_server.served_model_aliases]
            problem = lora_problem(self.lora, self.id, names, self.task, self.source)
            if problem:
                raise ValueError(f"lora: {problem}")
        return self

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
    def served_names(self) -> list[str]:
        """Every name clients may send as ``model`` for this model: its id, aliases, static adapters."""
        adapters = [a.name for a in self.lora.adapters] if self.lora else []
        return [self.id, *self.openai_server.served_model_aliases, *adapters]

    @property
    def gpus_per_replica(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def replica_gpus(self) -> float:
        """The GPUs one replica uses: the actor's own, or for a multi-GPU replica its placement
        group's (they are not on the actor)."""
        return self.ray_actor_options.num_gpus if self.gpus_per_replica == 1 else float(self.gpus_per_replica)


class ServerConfig(StrictModel):
    max_body_bytes: int = Field(2 * 1024 * 1024, ge=1024)
    # Request head limits (431 past them): uvicorn's parser may let far larger heads through.
    max_header_bytes: int = Field(16 * 1024, ge=1024)
    max_headers: int = Field(100, ge=16)
    # Put prompts and completions (each string cut at 16 KiB) into the router's request log lines;
    # off, the lines carry ids, counts and timings only (serve_app.observability.logs).
    log_prompts: bool = False
    # API keys: the name of an environment variable holding comma-separated keys, and/or a file of
    # one key a line. Both are read when the app is built (never here); with any key configured,
    # every route but /health and /ready needs ``Authorization: Bearer <key>``.
    api_keys_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    api_keys_file: str | None = Field(None, min_length=1)
    # Per-client limits (per API key; per client address when no keys are configured), enforced by
    # each router replica on its own: the cluster-wide limit is this times the router replicas.
    # ``flow_control.tenants`` holds quotas that hold cluster-wide.
    rate_limit_requests_per_minute: int | None = Field(None, ge=1)
    rate_limit_tokens_per_minute: int | None = Field(None, ge=1)
    # Browser origins allowed to call the API (CORS); empty = no CORS headers at all.
    cors_allow_origins: list[str] = Field(default_factory=list)
    # Ray Serve's throughput-optimized mode in the router and replica processes: user code and the
    # handle's router on the replica's own event loop instead of a thread hop per message, which
    # saves router and replica CPU per streamed token (benchmarks/results/stack-overhead/README.md).
    ray_serve_throughput_optimized: bool = True
    # Ray Serve's direct ingress: the router replica serves HTTP itself on a port from Ray's replica
    # range (30000+ per node). The shipped door, Ray Serve's HAProxy on the HTTP port (turned on
    # where Ray starts: RAY_SERVE_ENABLE_HA_PROXY=1), forwards to those ports and turns this on by
    # itself; set it only to reach router replicas directly without HAProxy.
    ray_serve_direct_ingress: bool = False

    @field_validator("cors_allow_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin != "*" and not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?", origin):
                raise ValueError(f"CORS origin {origin!r} must be '*' or scheme://host[:port] without a path")
        return origins


class AppConfig(StrictModel):
    models: list[ModelConfig] = Field(..., min_length=1)
    router: RouterConfig = Field(default_factory=RouterConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    nccl: NcclConfig = Field(default_factory=NcclConfig)
    # Tenants, cluster-wide quotas, priority classes (serve_app.config_tenants); None: off.
    flow_control: FlowControlConfig | None = None
    model_cache_dir: str | None = None

    @field_validator("models")
    @classmethod
    def _unique_ids(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        ids = [m.id for m in models]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate model id(s): {dupes}")
        names = [n for m in models for n in m.served_names]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"name(s) {dupes} name more than one model or adapter")
        return models

    def model(self, model_id: str) -> ModelConfig | None:
        return next((m for m in self.models if m.id == model_id), None)


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def describe_validation_error(err: ValidationError) -> str:
    """One line per problem, naming the key path, e.g. ``models[0].foo: unknown key``."""
    lines = []
    for e in err.errors():
        path = _format_loc(tuple(e["loc"]))
        if e["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown key {str(e['loc'][-1])!r}")
        else:
            lines.append(f"{path}: {e['msg']}")
    return "; ".join(lines)


def load_config(data: dict[str, Any] | AppConfig) -> AppConfig:
    if isinstance(data, AppConfig):
        return data
    try:
        return AppConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"invalid serve_app config: {describe_validation_error(err)}") from None


def app_args_from_serve_file(path: str | Path, app_name: str | None = None) -> dict[str, Any]:
    """The ``args`` block of one application in a Ray Serve config file."""
    doc = yaml.safe_load(Path(path).read_text())
    apps = doc.get("applications") if isinstance(doc, dict) else None
    if not apps:
        raise ConfigError(f"{path}: no 'applications' list")
    chosen = apps[0] if app_name is None else next((a for a in apps if a.get("name") == app_name), None)
    if chosen is None:
        raise ConfigError(f"{path}: no application named {app_name!r}")
    return dict(chosen.get("args") or {})
