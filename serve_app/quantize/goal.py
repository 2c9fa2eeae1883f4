"""The goal ``serve-app plan --goal`` plans for: GPU, SLO, traffic shape, checkpoints (pure, stdlib only).

A goal file (YAML, read by the command) looks like::

    model: llama-3-8b                  # a shape preset, a checkpoint folder or its config.json
    source: /models/llama-3-8b         # the bf16 checkpoint the baseline and FP8 variants serve
    gpu: h200
    gpus: 1                            # GPUs of this type to fill (one replica group each)
    slo: {ttft_p99_ms: 500, tpot_p99_ms: 50}
    traffic: {input_tokens: 512, output_tokens_mean: 128, output_tokens_spread: 0}
    checkpoints: {awq: /models/llama-3-8b-awq}   # optional; a gate report's model.path also works
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from serve_app.errors import ServeAppError
from serve_app.models.shapes import PRESETS
from serve_app.quantize.planner import GPUS
from serve_app.quantize.variants import CHECKPOINT_FORMATS, variant_by_id

GOAL_KEYS = frozenset(
    {
        "model", "source", "id", "gpu", "gpus", "slo", "traffic", "checkpoints", "variants",
        "max_model_len", "gpu_memory_utilization", "router_replicas", "min_gain",
    }
)  # fmt: skip


class GoalError(ServeAppError, ValueError):
    """A goal the planner cannot plan for; the message names the key."""


@dataclass(frozen=True)
class Slo:
    ttft_p99_ms: float
    tpot_p99_ms: float


@dataclass(frozen=True)
class Traffic:
    input_tokens: int
    output_tokens_mean: int
    output_tokens_spread: int = 0  # one standard deviation of the output length; 0 = fixed lengths

    @property
    def admission_output_tokens(self) -> int:
        """The completion length admission charges per request: the mean plus two spreads, the
        ``max_tokens`` clients of a spread workload are assumed to send."""
        return self.output_tokens_mean + 2 * self.output_tokens_spread


@dataclass(frozen=True)
class Goal:
    model: str
    source: str
    gpu: str
    slo: Slo
    traffic: Traffic
    model_id: str
    gpus: int = 1
    checkpoints: dict[str, str] = field(default_factory=dict)
    variants: tuple[str, ...] = ()  # empty = all
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    router_replicas: int = 1
    # A lower-precision variant must beat a higher-precision one's estimated goodput by this
    # fraction to be chosen: estimates are not that exact, and precision is worth keeping.
    min_gain: float = 0.05


def _number(data: Mapping[str, Any], key: str, where: str, kind: type = float, minimum: float = 0) -> Any:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise GoalError(f"{where}.{key}: expected a number >= {minimum}, got {value!r}")
    if kind is int and value != int(value):
        raise GoalError(f"{where}.{key}: expected a whole number, got {value!r}")
    return kind(value)


def _mapping(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    if not isinstance(value, Mapping):
        raise GoalError(f"{key}: expected a mapping, got {value!r}")
    return value


def _slo_and_traffic(data: Mapping[str, Any]) -> tuple[Slo, Traffic]:
    slo, traffic = _mapping(data, "slo"), _mapping(data, "traffic")
    spread = _number(traffic, "output_tokens_spread", "traffic", int) if "output_tokens_spread" in traffic else 0
    return (
        Slo(_number(slo, "ttft_p99_ms", "slo", minimum=1), _number(slo, "tpot_p99_ms", "slo", minimum=1)),
        Traffic(
            _number(traffic, "input_tokens", "traffic", int, 1),
            _number(traffic, "output_tokens_mean", "traffic", int, 1),
            spread,
        ),
    )


def _checkpoints(data: Mapping[str, Any]) -> dict[str, str]:
    checkpoints = dict(data.get("checkpoints") or {})
    unknown = sorted(set(checkpoints) - CHECKPOINT_FORMATS)
    if unknown:
        raise GoalError(f"checkpoints: unknown formats {unknown}; known: {sorted(CHECKPOINT_FORMATS)}")
    return {k: str(v) for k, v in checkpoints.items()}


def _variants(data: Mapping[str, Any]) -> tuple[str, ...]:
    names = tuple(str(v) for v in data.get("variants") or ())
    for name in names:
        try:
            variant_by_id(name)
        except ValueError as err:
            raise GoalError(f"variants: {err}") from None
    return names


def _default_id(model: str) -> str:
    """The preset's name, or the checkpoint folder's (also when given its config.json)."""
    parts = [p for p in model.split("/") if p and p != "config.json"]
    return parts[-1] if parts else model


def parse_goal(data: Any) -> Goal:
    if not isinstance(data, Mapping):
        raise GoalError(f"a goal is a mapping of {sorted(GOAL_KEYS)}, got {type(data).__name__}")
    unknown = sorted(set(data) - GOAL_KEYS)
    if unknown:
        raise GoalError(f"unknown goal keys {unknown}; known: {sorted(GOAL_KEYS)}")
    model, gpu = data.get("model"), data.get("gpu")
    if not isinstance(model, str) or not model:
        raise GoalError("model: a shape preset, a checkpoint folder or a config.json is required")
    if gpu not in GPUS:
        raise GoalError(f"gpu: expected one of {sorted(GPUS)}, got {gpu!r}")
    if model.lower() in PRESETS and not data.get("source"):
        raise GoalError(f"source: the checkpoint to serve is required when model is the shape preset {model!r}")
    slo, traffic = _slo_and_traffic(data)
    utilization = _number(data, "gpu_memory_utilization", "goal") if "gpu_memory_utilization" in data else 0.9
    if not 0 < utilization <= 1:
        raise GoalError("gpu_memory_utilization: must be in (0, 1]")
    return Goal(
        model=model,
        source=str(data.get("source") or model),
        gpu=gpu,
        slo=slo,
        traffic=traffic,
        model_id=str(data.get("id") or _default_id(model)),
        gpus=_number(data, "gpus", "goal", int, 1) if "gpus" in data else 1,
        checkpoints=_checkpoints(data),
        variants=_variants(data),
        max_model_len=_number(data, "max_model_len", "goal", int, 16) if "max_model_len" in data else None,
        gpu_memory_utilization=utilization,
        router_replicas=_number(data, "router_replicas", "goal", int, 1) if "router_replicas" in data else 1,
        min_gain=_number(data, "min_gain", "goal") if "min_gain" in data else 0.05,
    )
