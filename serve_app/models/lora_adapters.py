"""Checks of a LoRA adapter folder before vLLM loads it: the folder and its files exist, its rank
fits ``max_lora_rank``, and its weights fit the base model's shapes.

vLLM would refuse most of these too, but as a 500 at load time (a rank too large), or, for shapes,
deep inside a worker. These checks read only ``adapter_config.json``, the safetensors header and
the base's ``config.json`` (no tensors, no torch), so they run when the app is built, on each
replica before its engine starts, and before every adapter loaded at run time.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

CONFIG = "adapter_config.json"
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# peft key -> (module kind, A or B): base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight
_KEY = re.compile(r"\.layers\.(\d+)\..*?\.?(\w+_proj)\.lora_([AB])\.weight$")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors file's header (the tensors are not read)."""
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        if size > 100_000_000:
            raise ValueError(f"{path} has no valid safetensors header")
        header = json.loads(f.read(size))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def _expected_shapes(base_config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(in, out) features of each Llama-style projection, from the base's config.json."""
    hidden = base_config.get("hidden_size")
    inter = base_config.get("intermediate_size")
    heads = base_config.get("num_attention_heads")
    if not (hidden and inter and heads):
        return {}
    head_dim = base_config.get("head_dim") or hidden // heads
    kv = base_config.get("num_key_value_heads") or heads
    return {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv * head_dim),
        "v_proj": (hidden, kv * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }


def shape_problem(shapes: dict[str, list[int]], base_config: dict[str, Any]) -> str | None:
    """The first adapter weight that does not fit the base (a layer it lacks, other features)."""
    expected = _expected_shapes(base_config)
    layers = base_config.get("num_hidden_layers")
    for key, shape in shapes.items():
        found = _KEY.search(key)
        if not found or len(shape) != 2:
            continue
        layer, kind, half = int(found[1]), found[2], found[3]
        if layers is not None and layer >= layers:
            return f"{key}: layer {layer}, but the base has {layers} layers"
        if kind in expected:
            features_in, features_out = expected[kind]
            fits = shape[1] == features_in if half == "A" else shape[0] == features_out
            if not fits:
                base_shape = f"{features_in} -> {features_out}"
                return f"{key} has shape {shape}, which does not fit the base's {kind} ({base_shape})"
    return None


def adapter_problem(path: Path, max_rank: int, base: Path | None = None) -> str | None:
    """Why vLLM cannot serve this adapter with this ``max_lora_rank`` on this base, or None.
    ``base``: the base model's folder, when readable here (its shapes are then compared)."""
    if not path.is_dir():
        return f"adapter path {str(path)!r} is not a folder"
    if not (path / CONFIG).is_file():
        return f"adapter path {str(path)!r} holds no {CONFIG} (a peft LoRA adapter folder)"
    weights = next((path / w for w in WEIGHTS if (path / w).is_file()), None)
    if weights is None:
        return f"adapter path {str(path)!r} holds no {' or '.join(WEIGHTS)}"
    try:
        config = _read_json(path / CONFIG)
        rank = config.get("r")
        if config.get("peft_type", "LORA") != "LORA" or not isinstance(rank, int):
            return f"{path / CONFIG} is not a LoRA adapter config (peft_type LORA with an integer r)"
        ranks = [rank, *(v for v in (config.get("rank_pattern") or {}).values() if isinstance(v, int))]
        if max(ranks) > max_rank:
            return f"adapter {path.name!r} has rank {max(ranks)}, above max_lora_rank {max_rank}"
        if base is None or not (base / "config.json").is_file() or weights.suffix != ".safetensors":
            return None
        return shape_problem(safetensors_shapes(weights), _read_json(base / "config.json"))
    except (OSError, ValueError, struct.error) as err:
        return f"adapter {str(path)!r} could not be read: {err}"


def resolve_adapter_path(path: str, cache_dir: Path | None = None) -> Path:
    """A config's adapter ``path`` as a local folder; ``embedded:<name>`` is trained into the cache
    when missing (serve_app.models.embedded_adapters)."""
    from serve_app.config_lora import EMBEDDED_ADAPTER_PREFIX

    if path.startswith(EMBEDDED_ADAPTER_PREFIX):
        from serve_app.models.embedded_adapters import prepare_adapter

        return prepare_adapter(path[len(EMBEDDED_ADAPTER_PREFIX) :], cache_dir)
    return Path(path).expanduser()
