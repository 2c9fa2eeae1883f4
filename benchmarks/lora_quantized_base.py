"""LoRA adapters on a quantized base, on CPU: plain vLLM's OpenAI server with ``--enable-lora`` on a
quantized checkpoint of the embedded SmolLM2, serving the two embedded adapters; records each
model's greedy answers, or the engine's error (results: benchmarks/results/lora/README.md).

    python -m benchmarks.lora_quantized_base --out benchmarks/results/lora/quantized-base.json

Bases (each served in turn, ``--dtype bfloat16``):

* ``w8a8-int8``: int8 W8A8 compressed-tensors (``int-quantized``), the format ``serve-app quantize
  --method w8a8-int8`` writes: int8 per output channel, symmetric; activations per token at run time.
* ``w4a16``: int4 W4A16 compressed-tensors (``pack-quantized``), the layout llm-compressor's GPTQ
  W4A16 scheme writes: symmetric int4 in groups of 64 input channels (64 divides SmolLM2's 576 and
  1536; 128 does not divide 576), eight values per int32 along the input dimension, offset by 8.
  vLLM 0.32 runs it on CPU with ``CPUWNA16LinearKernel`` (it keeps ``weight_packed``).
* ``w4a16-asym``: the same with an asymmetric zero point per group, the layout of ``serve-app
  quantize --method awq`` (W4A16_ASYM).
* ``unquantized``: the embedded checkpoint itself, the reference for the adapters' answers.

The quantized checkpoints are made here by round-to-nearest, not by llm-compressor's GPTQ or
SmoothQuant: that needs the separate quantization environment (``scripts/setup_quant_env.sh``), and
vLLM loads and runs both the same way (the same config group, the same tensors). Needs the embedded
model and adapters (``serve-app prepare-model``, ``serve-app make-adapters``).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from benchmarks.seed_table import MODEL_ID, ROOT, plain_vllm_command, start_plain_vllm, stop, wait_ready
from serve_app.models.embedded import resolve_source
from serve_app.models.embedded_adapters import prepare_adapter
from serve_app.ports import free_port

ADAPTERS = ("pirate", "robot")
PROMPTS = ("What is the capital of France?", "Who painted the Mona Lisa?", "What is the chemical formula of water?")
_LINEAR = re.compile(r"\.(q|k|v|o|gate|up|down)_proj\.weight$")
_RAISED = re.compile(r"(^|\] )\w*(Error|Exception): ")  # a traceback's exception line
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


BASES: dict[str, tuple[str, Quantizer | None, dict[str, Any] | None]] = {
    "w8a8-int8": ("W8A8 int8 RTN per channel, compressed-tensors int-quantized", int8_per_channel, W8A8),
    "w4a16": (f"W4A16 int4 RTN group {W4_GROUP_SIZE}, compressed-tensors pack-quantized", int4_grouped_packed, W4A16),
    "w4a16-asym": (
        f"W4A16 int4 RTN asymmetric group {W4_GROUP_SIZE}, compressed-tensors pack-quantized",
        partial(int4_grouped_packed, symmetric=False),
        W4A16_ASYM,
    ),
    "unquantized": ("the embedded checkpoint (fp32 on disk), served in bfloat16", None, None),
}


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
    proc = start_plain_vllm(command, log, ROOT)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/health", 600)
        return answers(f"http://127.0.0.1:{port}")
    finally:
        stop(proc)


def run_base(name: str, workdir: Path) -> dict[str, Any]:
    """One base served with the adapters: its answers, or the engine's error lines."""
    description, quantize, quantization_config = BASES[name]
    checkpoint = resolve_source(f"embedded:{MODEL_ID}")
    if quantize is not None and quantization_config is not None:
        write_quantized(checkpoint, workdir / name, quantize, quantization_config)
        checkpoint = workdir / name
    log = workdir / f"{name}.log"
    report: dict[str, Any] = {"checkpoint": description}
    try:
        report["answers"] = serve_and_ask(checkpoint, log)
    except Exception as err:  # the engine's traceback is in its log
        report["error"] = [repr(err)]
    lines = log.read_text(errors="replace").splitlines()
    if "error" in report:
        raised = [line.split("] ", 1)[-1].strip() for line in lines if _RAISED.search(line)]
        report["error"].extend(dict.fromkeys(raised))  # each exception line once, in order
    wanted = ("Kernel for", "Loaded new LoRA adapter")  # the linear kernel vLLM chose; the adapters it loaded
    report["engine"] = [line.split("] ", 1)[-1] for line in lines if any(w in line for w in wanted)]
    return report


def compare(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per base: how many answers each adapter changes from the base's; per quantized base: how many
    answers equal the unquantized base's."""
    summary: dict[str, Any] = {}
    reference = results.get("unquantized", {}).get("answers")
    for name, result in results.items():
        got = result.get("answers")
        if got is None:
            continue
        entry = {f"{a}_differs_from_base": sum(got[a][p] != got[MODEL_ID][p] for p in PROMPTS) for a in ADAPTERS}
        if reference is not None and name != "unquantized":
            entry["equal_to_unquantized"] = {m: sum(got[m][p] == reference[m][p] for p in PROMPTS) for m in got}
        summary[name] = entry | {"of": len(PROMPTS)}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", nargs="+", choices=tuple(BASES), default=list(BASES))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/lora/quantized-base.json"))
    args = parser.parse_args()
    import vllm

    with tempfile.TemporaryDirectory() as tmp:
        results = {name: run_base(name, Path(tmp)) for name in args.base}
    report = {"vllm": vllm.__version__, "prompts": PROMPTS, "bases": results, "summary": compare(results)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
