"""The variants ``goodput.py`` gates and profiles (issue #21): each one's engine flags, the folders a
checkpoint variant serves (SmolLM2's for the gate, the 8B shape's for speed), and the gate phase,
``serve-app evaluate`` of each variant against bf16 SmolLM2.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import compare  # this folder's: models, servers, waiting
import gate_lm_eval  # this folder's: the lm-eval servers the gate's engines start beside

# (variant id, engine and serve-app evaluate flags), each gated on SmolLM2: vLLM's online FP8, with an
# FP8 KV cache too, and two checkpoints (their folders below; their config.json names the method).
FP8 = ["--quantization", "fp8"]
FP8_KV = [*FP8, "--kv-cache-dtype", "fp8"]
GATE_VARIANTS = (("fp8", FP8), ("fp8-fp8kv", FP8_KV), ("fp8-dynamic", []), ("w8a8", []))
PROFILED_VARIANTS = (("bf16", []), *GATE_VARIANTS)  # bf16: the gate's baseline, profiled like the others
# A checkpoint variant's folder: SmolLM2's for the gate (made on a CPU machine by `serve-app quantize
# --method fp8-dynamic` / `w8a8-int8` and shipped to the GPU), the 8B shape's for speed
# (make_8b_dummy.py --fp8-dynamic / --w8a8).
SMOLLM2 = "embedded:smollm2-135m-instruct"
GATE_MODELS = gate_lm_eval.CHECKPOINTS
SHAPE_MODELS = {"fp8-dynamic": compare.FP8_DYNAMIC_DUMMY, "w8a8": compare.W8A8_DUMMY}
# A variant no earlier profile holds takes its steady points' offered rates from one with the same
# kernels (only the rates: the points are its own), so it is profiled at steady load, not in a burst.
RATE_SOURCES = {"fp8-dynamic": "fp8", "w8a8": "fp8"}  # W8A8: int8 tensor cores, FP8's peak on Hopper
# evaluate beside other engines on the GPU, with gate_lm_eval.py's servers' settings: a low share
# passes vLLM's free-memory check, a fixed KV cache skips a memory profile the others' starts disturb.
GATE_GPU_MEMORY = gate_lm_eval.SHARED_GPU_FLAGS


def gate(out: Path, variants: list[str], state: Path) -> None:
    """``serve-app evaluate`` of each chosen variant against bf16 SmolLM2 (perplexity, golden answers),
    reports and logs under ``out/gate``, copied to ``state/gate`` for the later phases."""
    compare.prepare_models()
    folder = out / "gate"
    folder.mkdir(parents=True, exist_ok=True)
    for variant, flags in GATE_VARIANTS:
        if variant not in variants:
            continue
        report = folder / f"{variant}.json"
        model = str(GATE_MODELS.get(variant, SMOLLM2))
        cmd = [sys.executable, "-m", "serve_app.cli", "evaluate", "--model", model, "--baseline", SMOLLM2]
        cmd += ["--cache-dir", str(compare.CACHE), "--dtype", "bfloat16", "--report", str(report), *flags]
        cmd += GATE_GPU_MEMORY
        with (folder / f"{variant}.log").open("w") as log:
            code = subprocess.run(cmd, cwd=compare.REPO, stdout=log, stderr=subprocess.STDOUT).returncode
        print(variant, "exit", code, "report" if report.exists() else "NO REPORT", flush=True)
    state.mkdir(exist_ok=True)
    shutil.copytree(folder, state / "gate", dirs_exist_ok=True)


def variant_flags(variant: str) -> list[str]:
    """A gated variant's engine flags on the 8B shape (bf16 activations)."""
    return ["--dtype", "bfloat16", *dict(PROFILED_VARIANTS)[variant]]


def rate_source_points(variants: dict[str, list[dict]], variant: str) -> list[dict] | None:
    """The earlier points that set ``variant``'s steady rates: its own, else RATE_SOURCES' variant's."""
    return variants.get(variant) or variants.get(RATE_SOURCES.get(variant, ""))
