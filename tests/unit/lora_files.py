"""Small LoRA adapter folders in peft's layout for unit tests (zeros; only names and shapes matter)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

# A Llama-shaped base: hidden 64, 4 heads of 16, 2 key-value heads, intermediate 128, 2 layers.
BASE_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
}
SHAPES = {"q_proj": (64, 64), "v_proj": (64, 32), "down_proj": (128, 64)}  # (in, out)


def write_base(folder: Path, **overrides: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(BASE_CONFIG | overrides))
    return folder


def write_adapter(folder: Path, rank: int = 8, layers: int = 2, shapes: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 16, "target_modules": list(shapes or SHAPES)}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    tensors = {}
    for layer in range(layers):
        for kind, (features_in, features_out) in (shapes or SHAPES).items():
            group = "mlp" if kind.endswith(("gate_proj", "up_proj", "down_proj")) else "self_attn"
            key = f"base_model.model.model.layers.{layer}.{group}.{kind}"
            tensors[f"{key}.lora_A.weight"] = np.zeros((rank, features_in), dtype=np.float32)
            tensors[f"{key}.lora_B.weight"] = np.zeros((features_out, rank), dtype=np.float32)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder
