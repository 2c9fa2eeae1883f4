"""Typed application configuration.

The Ray Serve config file's ``args`` block is exactly :class:`AppConfig`, so ``serve run``,
``serve deploy`` and Python callers share one validation. Validation is pure: it reads no
files, starts nothing and imports neither Ray nor vLLM.

Sections are flat in the file and split by consumer in code: a ``models:`` entry into engine,
deployment, limits and health parts (``serve_app.config_model``), ``router:`` into replica choice,
admission and the router deployment (``serve_app.config_router``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from serve_app.config_engine import EngineConfig, OpenAIServerConfig
from serve_app.config_model import (
    ActorOptions,
    AutoscalingConfig,
    BatchingConfig,
    DeploymentConfig,
    HealthConfig,
    LimitsConfig,
    ModelConfig,
    PlacementConfig,
)
from serve_app.config_nccl import NcclConfig
from serve_app.config_router import RouterConfig
from serve_app.config_tenants import FlowControlConfig
from serve_app.errors import ServeAppError

# The sections' types stay importable from here (the model's parts live in config_engine and
# config_model, the router's in config_router).
__all__ = [
    "ActorOptions",
    "AppConfig",
    "AutoscalingConfig",
    "BatchingConfig",
    "ConfigError",
    "DeploymentConfig",
    "EngineConfig",
    "HealthConfig",
    "LimitsConfig",
    "ModelConfig",
    "OpenAIServerConfig",
    "PlacementConfig",
    "RouterConfig",
    "ServerConfig",
    "app_args_from_serve_file",
    "describe_validation_error",
    "load_config",
]


class ConfigError(ServeAppError, ValueError):
    """A configuration that cannot be served; the message names the offending key path."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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

    @model_validator(mode="after")
    def _model_pools(self) -> AppConfig:
        if self.flow_control is None:
            return self
        tasks = {m.id: m.task for m in self.models}
        for name, pools in self.flow_control.model_pools().items():
            for asked, pool in pools.items():
                where = f"flow_control.{name}.model_pools"
                if asked not in tasks or pool not in tasks:
                    raise ValueError(f"{where}: {asked!r} -> {pool!r} must name two models: entries by id")
                if asked == pool or tasks[asked] != tasks[pool]:
                    raise ValueError(f"{where}: {asked!r} -> {pool!r} must name another model of the same task")
        return self

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
