"""``quantization_report.json``: what was done to a checkpoint, written next to it (pure, stdlib only).

The per-layer statistics come from the saved compressed-tensors checkpoint (``*.weight_scale`` and
``*.weight_zero_point`` tensors); the pipeline reduces each tensor to min/max/mean and this module
assembles and summarizes them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

QUANT_REPORT = "quantization_report.json"
EVAL_REPORT = "evaluation_report.json"
REPORT_VERSION = 1
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
SAMPLE_BYTES = 1 << 20


@dataclass(frozen=True)
class TensorStats:
    min: float
    max: float
    mean: float
    count: int


def merge_stats(parts: Iterable[TensorStats]) -> TensorStats | None:
    parts = list(parts)
    if not parts:
        return None
    count = sum(p.count for p in parts)
    mean = sum(p.mean * p.count for p in parts) / count if count else 0.0
    return TensorStats(min(p.min for p in parts), max(p.max for p in parts), mean, count)


def layer_name(tensor_name: str) -> tuple[str, str] | None:
    """``model.layers.3.mlp.down_proj.weight_scale`` -> (``model.layers.3.mlp.down_proj``, ``scale``)."""
    for suffix, kind in ((".weight_scale", "scale"), (".weight_zero_point", "zero_point")):
        if tensor_name.endswith(suffix):
            return tensor_name[: -len(suffix)], kind
    return None


def per_layer_table(stats: Mapping[str, TensorStats]) -> dict[str, dict[str, Any]]:
    """Group tensor statistics by linear layer: ``{layer: {"scale": {...}, "zero_point": {...}}}``."""
    table: dict[str, dict[str, Any]] = {}
    for tensor_name, s in sorted(stats.items()):
        parsed = layer_name(tensor_name)
        if parsed is None:
            continue
        layer, kind = parsed
        table.setdefault(layer, {})[kind] = asdict(s)
    return table


def checkpoint_bytes(folder: Path) -> int:
    """Bytes of weight files in a checkpoint folder (configs and tokenizers excluded)."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def checkpoint_fingerprint(folder: Path, sample_bytes: int = SAMPLE_BYTES) -> str:
    """Identifies a checkpoint's content cheaply: config.json plus each weight file's name, size and
    first and last ``sample_bytes`` (the header and the last tensors, which any re-quantization
    changes). An evaluation report records it so a re-quantized folder does not inherit a verdict;
    reading a few MiB keeps the gate fast even for 100 GB checkpoints."""
    h = hashlib.sha256()
    config = folder / "config.json"
    if config.is_file():
        h.update(config.read_bytes())
    for p in sorted(folder.iterdir()):
        if not (p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)):
            continue
        size = p.stat().st_size
        h.update(f"{p.name}:{size}\n".encode())
        with p.open("rb") as f:
            h.update(f.read(sample_bytes))
            f.seek(max(0, size - sample_bytes))
            h.update(f.read(sample_bytes))
    return h.hexdigest()


def build_quantization_report(
    *,
    method: str,
    scheme: str,
    group_size: int | None,
    source: str,
    calibration: Mapping[str, Any] | None,
    tensor_stats: Mapping[str, TensorStats],
    wall_time_s: float,
    size_before_bytes: int,
    size_after_bytes: int,
    fingerprint: str,
    versions: Mapping[str, str],
    command: list[str],
) -> dict[str, Any]:
    layers = per_layer_table(tensor_stats)
    scale_summary = merge_stats(TensorStats(**v["scale"]) for v in layers.values() if "scale" in v)
    return {
        "report_version": REPORT_VERSION,
        "method": method,
        "scheme": scheme,
        "group_size": group_size,
        "source": source,
        "calibration": dict(calibration) if calibration else None,
        "wall_time_s": round(wall_time_s, 2),
        "checkpoint_bytes_before": size_before_bytes,
        "checkpoint_bytes_after": size_after_bytes,
        "compression_ratio": round(size_before_bytes / size_after_bytes, 3) if size_after_bytes else None,
        "checkpoint_fingerprint": fingerprint,
        "quantized_layers": len(layers),
        "scale_summary": asdict(scale_summary) if scale_summary else None,
        "layers": layers,
        "versions": dict(versions),
        "command": command,
    }


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data
