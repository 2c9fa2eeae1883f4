"""Quantized checkpoints of the embedded SmolLM2 made by round-to-nearest, in the formats vLLM loads
(compressed-tensors), for benchmarks/lora_quantized_base.py: linear layers only, ``lm_head`` and the
tied embedding kept.

* ``W8A8``: int8 W8A8 (``int-quantized``), the format ``serve-app quantize --method w8a8-int8``
  writes: int8 per output channel, symmetric; activations per token at run time.
* ``W4A16``: int4 W4A16 (``pack-quantized``), the layout llm-compressor's GPTQ W4A16 scheme writes:
  symmetric int4 in groups of 64 input channels (64 divides SmolLM2's 576 and 1536; 128 does not
  divide 576), eight values per int32 along the input dimension, offset by 8.
* ``W4A16_ASYM``: the same with an asymmetric zero point per group, the layout of ``serve-app
  quantize --method awq`` (W4A16_ASYM).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

_LINEAR = re.compile(r"\.(q|k|v|o|gate|up|down)_proj\.weight$")
W4_GROUP_SIZE = 64
_CT = {"quant_method": "compressed-tensors", "quantization_status": "compressed", "ignore": ["lm_head"]}
W8A8 = _CT | {
    "format": "int-quantized",
    "config_groups": {
        "group_0": {
            "targets": ["Linear"],
            "weights": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel", "dynamic": False},
            "input_activations": {
                "num_bits": 8,
                "type": "int",
                "symmetric": True,
                "strategy": "token",
                "dynamic": True,
            },
        }
    },
}
W4_WEIGHTS = {
    "num_bits": 4,
    "type": "int",
    "symmetric": True,
    "strategy": "group",
    "group_size": W4_GROUP_SIZE,
    "dynamic": False,
    "actorder": None,
}
W4A16 = _CT | {
    "format": "pack-quantized",
    "config_groups": {
        "group_0": {
            "targets": ["Linear"],
            "weights": W4_WEIGHTS,
            "input_activations": None,
            "output_activations": None,
            "format": "pack-quantized",
        }
    },
}
W4A16_ASYM = W4A16 | {
    "config_groups": {"group_0": W4A16["config_groups"]["group_0"] | {"weights": W4_WEIGHTS | {"symmetric": False}}}
}
Quantizer = Callable[[Any], dict[str, Any]]  # a float weight -> its tensors, by name suffix


def int8_per_channel(weight: Any) -> dict[str, Any]:
    import torch

    scale = weight.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127
    q = (weight.float() / scale).round().clamp(-128, 127).to(torch.int8)
    return {"weight": q, "weight_scale": scale.to(torch.bfloat16)}


def int4_grouped_packed(weight: Any, symmetric: bool = True) -> dict[str, Any]:
    """compressed-tensors ``pack-quantized``, packed by compressed-tensors' own helper (its int4
    range -8..7 shifted by 8; an asymmetric zero point packed along the output dimension)."""
    import torch
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    rows, cols = weight.shape
    groups = weight.float().reshape(rows, cols // W4_GROUP_SIZE, W4_GROUP_SIZE)
    if symmetric:
        scale = groups.abs().amax(dim=2, keepdim=True).clamp(min=1e-8) / 7
        zero = torch.zeros_like(scale)
    else:
        low, high = groups.amin(dim=2, keepdim=True).clamp(max=0), groups.amax(dim=2, keepdim=True).clamp(min=0)
        scale = ((high - low) / 15).clamp(min=1e-8)
        zero = (-8 - low / scale).round().clamp(-8, 7)
    q = (groups / scale + zero).round().clamp(-8, 7).to(torch.int8).reshape(rows, cols)
    tensors = {"weight_packed": pack_to_int32(q, 4), "weight_scale": scale.squeeze(2).to(torch.bfloat16)}
    if not symmetric:
        tensors["weight_zero_point"] = pack_to_int32(zero.squeeze(2).to(torch.int8), 4, packed_dim=0).contiguous()
    return tensors | {"weight_shape": torch.tensor([rows, cols], dtype=torch.int64)}


def write_quantized(base: Path, out: Path, quantize: Quantizer, quantization_config: dict[str, Any]) -> None:
    """``base`` (a float checkpoint) with its linear layers quantized by ``quantize``, in ``out``."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors: dict[str, Any] = {}
    for name, weight in load_file(base / "model.safetensors").items():
        if not _LINEAR.search(name):
            tensors[name] = weight.to(torch.bfloat16)
            continue
        prefix = name.removesuffix("weight")
        tensors |= {prefix + suffix: tensor for suffix, tensor in quantize(weight).items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "model.safetensors")
    for item in base.iterdir():
        if item.is_file() and item.name not in ("model.safetensors", "config.json"):
            shutil.copy2(item, out / item.name)
    config = json.loads((base / "config.json").read_text()) | {"quantization_config": quantization_config}
    (out / "config.json").write_text(json.dumps(config | {"dtype": "bfloat16"}, indent=2))
