"""One validation pipeline for a serve config, used by ``build_app`` before it deploys anything and
by ``serve-app check`` (which stops there): the schema (every problem named by its key path), the
quantization gate, static LoRA adapters and each model's replica placement.

Imports neither Ray nor vLLM. Folders not readable here pass the folder checks; each replica checks
its model and adapters again where it loads them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from serve_app.config import AppConfig, ConfigError, load_config
from serve_app.core.placement import PlacementError, ReplicaPlacement, load_model_shape, plan_replica_placement
from serve_app.models.embedded import EMBEDDED_PREFIX, resolve_source
from serve_app.models.lora_adapters import adapter_problem
from serve_app.quantize.gate import check_deployable
from serve_app.quantize.lora_support import base_schemes, lora_quantization_problem


def check_quantization_gates(config: AppConfig) -> None:
    """Refuse quantized checkpoints without a passing evaluation (serve_app.quantize.gate)."""
    for model in config.models:
        if not model.source.startswith(EMBEDDED_PREFIX):
            check_deployable(model, Path(model.source).expanduser())


def check_adapters(config: AppConfig) -> None:
    """Refuse static LoRA adapters that cannot be served: a missing folder, a rank above
    ``max_lora_rank``, weights that do not fit the base (where its folder is readable here).
    Embedded adapters are made on the replica when missing; it checks every one again."""
    for i, model in enumerate(config.models):
        if model.lora is None:
            continue
        base = resolve_source(model.source, Path(config.model_cache_dir) if config.model_cache_dir else None, False)
        check_lora_on_quantized(i, base, model.quantization, model.kv_cache_dtype, model.replica_gpus > 0)
        for j, adapter in enumerate(model.lora.adapters):
            if adapter.embedded_name is not None:
                continue
            problem = adapter_problem(Path(adapter.path).expanduser(), model.lora.max_lora_rank, base)
            if problem:
                raise ConfigError(f"invalid serve_app config: models[{i}].lora.adapters[{j}]: {problem}")


def check_lora_on_quantized(
    index: int, base: Path, quantization: str | None, kv_cache_dtype: str, on_gpu: bool
) -> None:
    """Refuse LoRA on a quantized base measured not to take it on this device: the checkpoint's
    quantization (from its config.json, where readable here), quantize-on-load and the KV cache
    dtype (see ``serve_app.quantize.lora_support``)."""
    try:
        hf_config = json.loads((base / "config.json").read_text())
    except (OSError, ValueError):
        hf_config = None
    checkpoint = hf_config.get("quantization_config") if isinstance(hf_config, dict) else None
    schemes = base_schemes(checkpoint if isinstance(checkpoint, dict) else None, quantization, kv_cache_dtype)
    if problem := lora_quantization_problem(schemes, "gpu" if on_gpu else "cpu"):
        where = f" ({base})" if checkpoint else ""
        raise ConfigError(f"invalid serve_app config: models[{index}].lora: {problem}{where}")


def check_placements(config: AppConfig) -> dict[str, ReplicaPlacement]:
    """Each model's replica placement, by model id; a layout that cannot work is a ConfigError
    naming the model's key path."""
    placements = {}
    for i, model in enumerate(config.models):
        try:
            engine, deployment = model.engine(), model.deployment()
            placements[model.id] = plan_replica_placement(engine, deployment, load_model_shape(engine, deployment))
        except PlacementError as err:
            raise ConfigError(f"invalid serve_app config: models[{i}]: {err}") from None
    return placements


def validate_app(args: dict[str, Any] | AppConfig, engine_options: bool = False) -> AppConfig:
    """The config, validated end to end without starting anything; raises ConfigError (a key path
    and the problem) or GateError (a quantized checkpoint that failed or skipped its evaluation).
    ``engine_options`` also checks them against the installed vLLM (see check_engine_options)."""
    config = load_config(args)
    check_quantization_gates(config)
    check_adapters(config)
    check_placements(config)
    if engine_options:
        check_engine_options(config)
    return config


def check_engine_options(config: AppConfig) -> None:
    """Each model's engine and server options against the installed vLLM (imported here, so only
    where vLLM is installed: ``serve-app check``, not the Ray head that runs ``build_app``)."""
    from serve_app.engine.vllm_engine import engine_option_problems

    for i, model in enumerate(config.models):
        problems = engine_option_problems(model.engine())
        if problems:
            raise ConfigError("invalid serve_app config: " + "; ".join(f"models[{i}].{p}" for p in problems))
