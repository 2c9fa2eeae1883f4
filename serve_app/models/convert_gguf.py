"""Child-process entry point: dequantize a GGUF checkpoint into plain safetensors.

Usage: python -m serve_app.models.convert_gguf MODEL.gguf OUT_DIR [--quiet]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def convert(gguf: Path, out: Path, quiet: bool = False) -> None:
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps = tqdm(total=3, desc="prepare SmolLM2", unit="step", disable=quiet)
    steps.set_postfix_str("tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    steps.update()
    steps.set_postfix_str("dequantize weights")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    steps.update()
    # The weights are dequantized now; a leftover GGUF quantization_config would make loaders
    # treat the safetensors as still quantized.
    # setattr: torch's Module types attribute assignment as submodules and tensors only.
    setattr(model, "hf_quantizer", None)  # noqa: B010
    setattr(model, "is_quantized", False)  # noqa: B010
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    steps.set_postfix_str("write safetensors")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    steps.update()
    steps.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("gguf", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    convert(args.gguf, args.out, args.quiet)


if __name__ == "__main__":
    main()
