"""LoRA adapters on a quantized base: plain vLLM's OpenAI server with ``--enable-lora`` on quantized
checkpoints of the embedded SmolLM2, serving the two embedded adapters; records each model's greedy
answers, or the engine's error, and the linear kernel vLLM chose (results:
benchmarks/results/lora/README.md).

    python -m benchmarks.lora_quantized_base --out benchmarks/results/lora/quantized-base.json
    python -m benchmarks.lora_quantized_base --device gpu --adapters-dir .gpu-data/adapters \
        --cache-dir /tmp/mc --logs $OUT/logs --out $OUT/quantized-base-gpu.json   # one GPU, ~5 min

Bases on CPU (each served in turn, ``--dtype bfloat16``): ``w8a8-int8``, ``w4a16``, ``w4a16-asym``
(benchmarks/quantized_checkpoints.py) and ``unquantized``, the embedded checkpoint itself, the
reference for the adapters' answers. On a GPU (``--device gpu``): ``unquantized`` first, then FP8
quantized on load (``fp8``), the same with an FP8 KV cache (``fp8-fp8kv``), and the three checkpoints;
each engine in 0.3 of the GPU's memory, eager, its start time-boxed (``--start-timeout-s``) and
skipped when the whole run's budget (``--budget-s``) could not fit it, so one failure cannot eat a
device call.

The quantized checkpoints are made here by round-to-nearest, not by llm-compressor's GPTQ or
SmoothQuant: that needs the separate quantization environment (``scripts/setup_quant_env.sh``), and
vLLM loads and runs both the same way (the same config group, the same tensors). Needs the embedded
model (converted in a process of its own before any engine starts) and the adapters: ``serve-app
make-adapters``, or ``--adapters-dir`` holding ``pirate/`` and ``robot/`` (copies of what it made).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from benchmarks.quantized_checkpoints import (
    W4_GROUP_SIZE,
    W4A16,
    W4A16_ASYM,
    W8A8,
    Quantizer,
    int4_grouped_packed,
    int8_per_channel,
    write_quantized,
)
from benchmarks.seed_table import MODEL_ID, ROOT, plain_vllm_command, start_plain_vllm, stop, wait_ready
from serve_app.models.embedded import resolve_source
from serve_app.ports import free_port

ADAPTERS = ("pirate", "robot")
PROMPTS = ("What is the capital of France?", "Who painted the Mona Lisa?", "What is the chemical formula of water?")
_RAISED = re.compile(r"(^|\] )\w*(Error|Exception): ")  # a traceback's exception line
# Start-up lines worth keeping: the linear kernel vLLM chose (CPU: "Kernel for"; GPU: "Using X for
# Y" / "Selected X for Y"), the attention backend, the adapters it loaded.
_ENGINE_LINE = re.compile(r"Kernel for|(Using|Selected) \S+ for |[Aa]ttention backend|Loaded new LoRA adapter")
# Every process on a lent GPU machine: NVLink multicast stays off (benchmarks/gpu/compare.py).
GPU_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
FP8 = ("--quantization", "fp8")


@dataclass(frozen=True)
class Base:
    description: str
    quantize: Quantizer | None = None  # None: the float checkpoint as it is
    quantization_config: dict[str, Any] | None = None
    flags: tuple[str, ...] = field(default=())  # extra vLLM flags (quantize on load, KV cache dtype)


CHECKPOINTS = {
    "w8a8-int8": Base("W8A8 int8 RTN per channel, compressed-tensors int-quantized", int8_per_channel, W8A8),
    "w4a16": Base(
        f"W4A16 int4 RTN group {W4_GROUP_SIZE}, compressed-tensors pack-quantized", int4_grouped_packed, W4A16
    ),
    "w4a16-asym": Base(
        f"W4A16 int4 RTN asymmetric group {W4_GROUP_SIZE}, compressed-tensors pack-quantized",
        partial(int4_grouped_packed, symmetric=False),
        W4A16_ASYM,
    ),
}
UNQUANTIZED = Base("the embedded checkpoint (fp32 on disk), served in bfloat16")
BASES = {
    "cpu": CHECKPOINTS | {"unquantized": UNQUANTIZED},
    "gpu": {
        "unquantized": UNQUANTIZED,
        "fp8": Base("the embedded checkpoint quantized to FP8 on load (--quantization fp8)", flags=FP8),
        "fp8-fp8kv": Base("FP8 on load with an FP8 KV cache", flags=(*FP8, "--kv-cache-dtype", "fp8")),
    }
    | CHECKPOINTS,
}


def answers(url: str) -> dict[str, dict[str, str]]:
    """model -> prompt -> greedy answer (24 tokens)."""
    result: dict[str, dict[str, str]] = {}
    for model in (MODEL_ID, *ADAPTERS):
        for prompt in PROMPTS:
            body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 24}
            resp = httpx.post(f"{url}/v1/chat/completions", json=body | {"temperature": 0}, timeout=120)
            resp.raise_for_status()
            result.setdefault(model, {})[prompt] = resp.json()["choices"][0]["message"]["content"]
    return result


def adapter_paths(adapters_dir: Path | None) -> dict[str, Path]:
    """Each adapter's folder: under ``adapters_dir`` (copies carried to a GPU machine), else the
    cache ``serve-app make-adapters`` fills (made here when missing)."""
    if adapters_dir is not None:
        return {name: (adapters_dir / name).resolve() for name in ADAPTERS}
    from serve_app.models.embedded_adapters import prepare_adapter

    return {name: prepare_adapter(name) for name in ADAPTERS}


def engine_command(checkpoint: Path, port: int, base: Base, adapters: dict[str, Path], device: str) -> list[str]:
    command = plain_vllm_command(checkpoint, port, dtype="bfloat16", max_model_len=512)
    modules = [f"{name}={path}" for name, path in adapters.items()]
    command += ["--enable-lora", "--lora-modules", *modules, "--max-lora-rank", "8", "--seed", "0", *base.flags]
    if device == "gpu":  # engines run one at a time; a small share keeps the start (KV cache setup) short
        command += ["--gpu-memory-utilization", "0.3"]
    return command


def serve_and_ask(command: list[str], port: int, log: Path, device: str, timeout_s: float) -> dict[str, Any]:
    env = GPU_ENV | {"CUDA_VISIBLE_DEVICES": "0"} if device == "gpu" else None
    started = time.monotonic()
    proc = start_plain_vllm(command, log, ROOT, env)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/health", timeout_s)
        ready_s = round(time.monotonic() - started, 1)
        return {"engine_ready_s": ready_s, "answers": answers(f"http://127.0.0.1:{port}")}
    finally:
        stop(proc)


def prepare_model(cache_dir: Path | None) -> Path:
    """The embedded SmolLM2 converted to safetensors in a process of its own (transformers and a vLLM
    engine in one process hung on a GPU machine: /work/shared/gpu/README.md's notes)."""
    cache = ["--cache-dir", str(cache_dir)] if cache_dir else []
    subprocess.run([sys.executable, "-m", "serve_app.cli", "prepare-model", "--quiet", *cache], check=True, cwd=ROOT)
    return resolve_source(f"embedded:{MODEL_ID}", cache_dir, prepare=False)


def run_base(name: str, base: Base, model: Path, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One base served with the adapters: its answers, or the engine's error lines."""
    checkpoint = model
    if base.quantize is not None and base.quantization_config is not None:
        write_quantized(model, workdir / name, base.quantize, base.quantization_config)
        checkpoint = workdir / name
    log = (args.logs or workdir) / f"{name}.log"
    report: dict[str, Any] = {"checkpoint": description_of(base)}
    port = free_port()
    command = engine_command(checkpoint, port, base, adapter_paths(args.adapters_dir), args.device)
    try:
        report |= serve_and_ask(command, port, log, args.device, args.start_timeout_s)
    except Exception as err:  # the engine's traceback is in its log
        report["error"] = [repr(err)]
    lines = log.read_text(errors="replace").splitlines()
    if "error" in report:
        raised = [line.split("] ", 1)[-1].strip() for line in lines if _RAISED.search(line)]
        report["error"].extend(dict.fromkeys(raised))  # each exception line once, in order
    engine = [line.split("] ", 1)[-1].strip() for line in lines if _ENGINE_LINE.search(line)]
    report["engine"] = list(dict.fromkeys(engine))
    return report


def description_of(base: Base) -> str:
    return base.description + (f" ({' '.join(base.flags)})" if base.flags else "")


def run_all(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Every chosen base in turn; a base the remaining budget cannot fit (one start time-box and a
    minute to ask and stop) is recorded as skipped rather than started."""
    bases = BASES[args.device]
    started = time.monotonic()  # the budget counts the model's conversion too
    model = prepare_model(args.cache_dir)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.base or list(bases):
            left = args.budget_s - (time.monotonic() - started)
            if left < args.start_timeout_s + 60:
                results[name] = {"checkpoint": description_of(bases[name]), "skipped": f"{left:.0f} s of budget left"}
                continue
            results[name] = run_base(name, bases[name], model, Path(tmp), args)
            print(name, json.dumps(results[name], ensure_ascii=False), flush=True)
    return results


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
    parser.add_argument("--device", choices=tuple(BASES), default="cpu")
    parser.add_argument("--base", nargs="+", choices=sorted({n for b in BASES.values() for n in b}))
    parser.add_argument("--adapters-dir", type=Path, help="holds pirate/ and robot/ (default: make-adapters' cache)")
    parser.add_argument("--cache-dir", type=Path, help="the embedded model's cache (default: serve-app's)")
    parser.add_argument("--logs", type=Path, help="keep each engine's log here (default: dropped)")
    parser.add_argument("--start-timeout-s", type=float, help="each engine's start (default: cpu 600, gpu 150)")
    parser.add_argument("--budget-s", type=float, default=3600.0, help="the whole run; later bases are skipped")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/lora/quantized-base.json"))
    args = parser.parse_args()
    unknown = sorted(set(args.base or ()) - set(BASES[args.device]))
    if unknown:
        parser.error(f"not a {args.device} base: {unknown}")
    if args.start_timeout_s is None:
        args.start_timeout_s = 150.0 if args.device == "gpu" else 600.0
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
    results = run_all(args)
    import vllm  # after every engine ran: only its version

    report = {"vllm": vllm.__version__, "device": args.device, "prompts": PROMPTS, "bases": results}
    report["summary"] = compare(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(report["summary"], indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
