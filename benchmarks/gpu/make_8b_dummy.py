"""Write an 8B-shaped Llama model folder (config + tokenizer, no weights) for ``load_format=dummy``.

Shape: Llama-3-8B (hidden 4096, 32 layers, 32 heads, 8 KV heads, MLP 14336). The tokenizer is the
embedded SmolLM2's (no model hub here), so the vocabulary is 49,152 instead of 128,256: the LM head
is ~0.3 B parameters smaller than the real model's; everything else matches.

With ``--awq`` the config also carries an AWQ int4 ``quantization_config`` (group size 128, the
layout of published AWQ Llama checkpoints): vLLM's dummy loader then allocates the packed int4
weights and random scales, and picks its AWQ Marlin kernels on Hopper as for a real checkpoint.

With ``--fp8-dynamic`` or ``--w8a8`` it carries the compressed-tensors ``quantization_config`` that
``serve-app quantize --method fp8-dynamic`` / ``--method w8a8-int8`` (llm-compressor) writes: FP8
(``float-quantized``) or int8 (``int-quantized``) weights with one scale per output channel,
activations quantized per token at run time, ``lm_head`` left in 16-bit. The same schemes as the
SmolLM2 checkpoints the gate judges; vLLM picks its CUTLASS FP8 or int8 kernels.

Usage: python benchmarks/gpu/make_8b_dummy.py TOKENIZER_DIR OUT_DIR [--awq | --fp8-dynamic | --w8a8]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

LLAMA3_8B_SHAPE = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
AWQ_INT4 = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}


def _compressed_tensors(kind: str, format_: str) -> dict:
    """llm-compressor's FP8_DYNAMIC (kind float) or W8A8 (kind int) scheme as its config.json has it."""
    args = {"num_bits": 8, "type": kind, "symmetric": True, "group_size": None}
    return {
        "quant_method": "compressed-tensors",
        "format": format_,
        "quantization_status": "compressed",
        "ignore": ["lm_head"],
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "format": format_,
                "weights": args | {"strategy": "channel", "dynamic": False},
                "input_activations": args | {"strategy": "token", "dynamic": True},
                "output_activations": None,
            }
        },
        "kv_cache_scheme": None,
    }


# flag -> what the config gains
SCHEMES = {
    "--awq": {"quantization_config": AWQ_INT4, "torch_dtype": "float16"},
    "--fp8-dynamic": {"quantization_config": _compressed_tensors("float", "float-quantized")},
    "--w8a8": {"quantization_config": _compressed_tensors("int", "int-quantized")},
}


def main(tokenizer_dir: Path, out: Path, scheme: str | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, out / name)
    source = json.loads((tokenizer_dir / "config.json").read_text())
    config = LLAMA3_8B_SHAPE | {k: source[k] for k in ("vocab_size", "bos_token_id", "eos_token_id")}
    config |= SCHEMES[scheme] if scheme else {}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    print(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
