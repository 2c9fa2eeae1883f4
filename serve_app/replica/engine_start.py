"""What a replica starts its engine from: the model folder on this node (checked by the
quantization gate again here) and the engine built over the config's engine part."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from serve_app.config_engine import EngineConfig
from serve_app.engine.protocol import Engine
from serve_app.replica.parts import ReplicaParts

EngineFactory = Callable[[ReplicaParts, Path], Engine]


def vllm_engine_factory(parts: ReplicaParts, path: Path) -> Engine:
    """vLLM over the engine part of the config; of the deployment part only what the engine's
    start needs (GPU sharing, the multi-GPU pre-flight)."""
    from serve_app.engine.vllm_engine import VllmEngine

    return VllmEngine(parts.engine, path, parts.actor_gpus, parts.preflight_timeout_s)


def resolve_model_path(config: EngineConfig, cache_dir: str | None) -> Path:
    """The model folder on this node; a quantized one must pass the deployment gate here too,
    since the app may have been built where the folder was not readable."""
    from serve_app.models.embedded import resolve_source
    from serve_app.quantize.gate import check_deployable

    path = resolve_source(config.source, Path(cache_dir) if cache_dir else None)
    check_deployable(config, path)
    return path
