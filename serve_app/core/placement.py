"""Placement of a multi-GPU replica: the Ray placement group its workers run in, and the checks
that reject layouts which cannot work before any GPU is reserved.

A replica with ``tensor_parallel_size x pipeline_parallel_size`` GPUs gets bundle 0 for the
replica actor itself (CPUs only; vLLM's engine core runs beside it) and one ``{"GPU": 1, "CPU": c}``
bundle per worker. vLLM's Ray executor (``distributed_executor_backend="ray"``) starts one worker
in each bundle that has a GPU, in bundle order, then ranks them node by node. Strategy:
STRICT_PACK when the replica fits on one node (all ranks share NVLink), PACK (or SPREAD when
configured) when pipeline stages span nodes.

Pure: no Ray, no vLLM. :func:`load_model_shape` is the only function that reads files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from serve_app.config_engine import EngineConfig
from serve_app.config_model import DeploymentConfig
from serve_app.errors import ServeAppError
from serve_app.models.embedded import EMBEDDED_PREFIX, EMBEDDED_SHAPE_PRESETS
from serve_app.models.shapes import PRESETS, ModelShape, UnknownModelError, shape_from_hf_config

Strategy = Literal["STRICT_PACK", "PACK", "SPREAD"]


class PlacementError(ServeAppError, ValueError):
    """A parallel layout that cannot run; the message names the model and the reason."""


@dataclass(frozen=True)
class ShapeInfo:
    shape: ModelShape
    origin: str  # where the numbers came from, for messages
    quant_group_size: int | None = None  # AWQ/GPTQ group size from config.json, when known


@dataclass(frozen=True)
class ReplicaPlacement:
    model_id: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    num_nodes: int
    strategy: Strategy | None  # None: a single-GPU replica needs no placement group
    bundles: tuple[Mapping[str, float], ...]
    notes: tuple[str, ...] = ()

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments for ``serve.deployment(...).options(...)``; empty for one GPU."""
        if self.strategy is None:
            return {}
        return {
            "placement_group_bundles": [dict(b) for b in self.bundles],
            "placement_group_strategy": self.strategy,
        }


def _shape_from_folder(folder: Path) -> ShapeInfo | None:
    config_file = folder / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return None
    try:
        shape = shape_from_hf_config(folder.name, config)
    except UnknownModelError:
        return None
    quant = config.get("quantization_config") or {}
    group = quant.get("group_size") if isinstance(quant, dict) else None
    return ShapeInfo(shape, f"{config_file}", int(group) if isinstance(group, int) and group > 0 else None)


def load_model_shape(
    engine: EngineConfig, deployment: DeploymentConfig, model_folder: Path | None = None
) -> ShapeInfo | None:
    """The model's shape: its config.json when the folder is readable here, else ``shape_preset``
    (or the preset of an embedded model), else ``None`` (unknown: head checks are skipped)."""
    folder = model_folder
    if folder is None and not engine.source.startswith(EMBEDDED_PREFIX):
        folder = Path(engine.source).expanduser()
    if folder is not None:
        info = _shape_from_folder(folder)
        if info is not None:
            return info
    preset = deployment.shape_preset or EMBEDDED_SHAPE_PRESETS.get(engine.source.removeprefix(EMBEDDED_PREFIX))
    if preset is not None:
        return ShapeInfo(PRESETS[preset], f"preset {preset!r}")
    return None


def _check_heads(tp: int, info: ShapeInfo) -> list[str]:
    s, problems = info.shape, []
    if s.num_attention_heads % tp:
        problems.append(
            f"tensor_parallel_size={tp} does not divide the {s.num_attention_heads} attention heads "
            f"({info.origin}); each rank must hold a whole number of heads"
        )
    kv = s.num_kv_heads
    if kv >= tp and kv % tp:
        problems.append(f"tensor_parallel_size={tp} does not divide the {kv} KV heads ({info.origin})")
    if kv < tp and tp % kv:
        problems.append(
            f"tensor_parallel_size={tp} is not a multiple of the {kv} KV heads ({info.origin}); vLLM "
            "replicates KV heads across ranks only when the rank count is a multiple of them"
        )
    if info.quant_group_size and s.intermediate_size % (tp * info.quant_group_size):
        problems.append(
            f"intermediate_size {s.intermediate_size} / tensor_parallel_size={tp} is not a multiple of the "
            f"quantization group size {info.quant_group_size}: the row-parallel MLP shards would split groups"
        )
    return problems


def _check_layout(tp: int, pp: int, deployment: DeploymentConfig) -> list[str]:
    per_node = deployment.placement.gpus_per_node
    problems = []
    if tp > per_node:
        problems.append(
            f"tensor_parallel_size={tp} exceeds gpus_per_node={per_node}: tensor-parallel ranks exchange "
            "activations in every layer and must stay inside one node (NVLink); use pipeline_parallel_size "
            "to span nodes"
        )
    elif tp * pp > per_node and per_node % tp:
        problems.append(
            f"tensor_parallel_size={tp} does not divide gpus_per_node={per_node}: with {tp * pp} GPUs over "
            "several nodes a tensor-parallel group would straddle two nodes"
        )
    actor = deployment.ray_actor_options
    if actor.num_gpus > per_node:
        problems.append(f"ray_actor_options.num_gpus={actor.num_gpus} exceeds gpus_per_node")
    if tp * pp > 1 and actor.num_gpus > 0:
        problems.append(
            "ray_actor_options.num_gpus must be 0 for a multi-GPU replica: the workers' bundles hold the GPUs, "
            "and a GPU in the replica actor's bundle would become an extra vLLM worker"
        )
    if tp * pp > 1 and actor.num_cpus <= 0 and not actor.memory and not any(actor.resources.values()):
        problems.append(
            "ray_actor_options needs num_cpus > 0 for a multi-GPU replica: its placement-group bundle would "
            "otherwise be empty, which Ray rejects"
        )
    if tp * pp > per_node and tp > 1 and deployment.placement.multi_node_strategy == "SPREAD":
        problems.append(
            "multi_node_strategy SPREAD puts bundles on different nodes, which would split tensor-parallel "
            "groups across nodes; use PACK (SPREAD suits tensor_parallel_size=1 pipelines only)"
        )
    return problems


def plan_replica_placement(
    engine: EngineConfig, deployment: DeploymentConfig, shape: ShapeInfo | None = None
) -> ReplicaPlacement:
    """Validate the model's parallel layout (the engine part's) against what its deployment asks
    of Ray, and build its placement group; raises PlacementError."""
    tp, pp = engine.tensor_parallel_size, engine.pipeline_parallel_size
    problems = _check_layout(tp, pp, deployment)
    notes: list[str] = []
    if shape is not None:
        problems += _check_heads(tp, shape)
        if pp > shape.shape.num_layers:
            problems.append(f"pipeline_parallel_size={pp} exceeds the {shape.shape.num_layers} layers")
    elif tp > 1:
        notes.append("model shape unknown (no readable config.json, no shape_preset): head divisibility unchecked")
    if problems:
        raise PlacementError(f"model {engine.id!r}: " + "; ".join(problems))
    world = tp * pp
    per_node = deployment.placement.gpus_per_node
    num_nodes = math.ceil(world / per_node)
    if world == 1:
        return ReplicaPlacement(engine.id, tp, pp, 1, None, (), tuple(notes))
    actor = deployment.ray_actor_options
    head_bundle: dict[str, float] = {"CPU": actor.num_cpus} | dict(actor.resources)
    if actor.memory:
        head_bundle["memory"] = float(actor.memory)
    worker_bundle = {"GPU": 1.0, "CPU": deployment.placement.cpus_per_worker}
    strategy: Strategy = "STRICT_PACK" if num_nodes == 1 else deployment.placement.multi_node_strategy
    bundles = (head_bundle, *(dict(worker_bundle) for _ in range(world)))
    return ReplicaPlacement(engine.id, tp, pp, num_nodes, strategy, bundles, tuple(notes))
