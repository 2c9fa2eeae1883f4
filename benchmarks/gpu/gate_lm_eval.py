"""lm-eval through vLLM's OpenAI API on the GPU: the project's two tasks (``serve_app/data/lm_eval``)
on the real SmolLM2 in bf16 and in each FP8 variant the goodput gate checks (issue #21): online FP8
(``fp8``, ``fp8-fp8kv``), and FP8_DYNAMIC and W8A8 int8 checkpoints (``fp8-dynamic``, ``w8a8``). Perplexity
and golden answers come from ``goodput.py gate``; this adds the task scores through the API.

    python benchmarks/gpu/gate_lm_eval.py --out $OUT --lm-eval-python /tmp/lm-eval-python

All chosen variants are served at once, each by plain vLLM's api_server on its own port, eager
(greedy answers do not depend on graph capture), and scored concurrently, a thread per variant (one
engine start's time instead of three: a first start took ~150 s on a fresh H200). Each variant is
scored only on its own server, which is stopped whatever happened; one variant's failure is
recorded as its ``error`` and the others go on. lm-eval sends one request at a time to each server.
The report (``lm-eval.json``) holds each variant's scores and wall ``seconds`` (start to stop, the
engines sharing the GPU) and, for the FP8 variants, the change against bf16 with a verdict: no
score may fall by more than ``--max-score-drop``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import compare  # this folder's: model cache, spawning, waiting

sys.path.insert(0, str(compare.REPO))
from serve_app.quantize.lm_eval_task import MC_TASK, TASKS, lm_eval_command, read_scores
from serve_app.quantize.lm_eval_verdict import MAX_SCORE_DROP, judge

FIRST_PORT = 8102  # each variant its own port: a server left over cannot answer for the next one
SERVED_NAME = "smollm2-135m-instruct"
MODEL_DIR = compare.CACHE / SERVED_NAME
FP8 = ["--quantization", "fp8"]
VARIANTS = (
    *(("bf16", []), ("fp8", FP8), ("fp8-fp8kv", [*FP8, "--kv-cache-dtype", "fp8"])),
    *(("fp8-dynamic", []), ("w8a8", [])),
)
# A checkpoint variant's own folder (`serve-app quantize --method fp8-dynamic` / `w8a8-int8` of
# SmolLM2, made on a CPU machine and shipped); the others serve the converted GGUF with their flags.
CHECKPOINTS = {v: compare.CACHE / f"{SERVED_NAME}-{v}" for v in ("fp8-dynamic", "w8a8")}
ENGINE_FLAGS = ["--dtype", "bfloat16", "--enforce-eager", "--seed", "0", "--max-model-len", "2048"]
# A fixed KV cache per engine: engines starting together on one GPU cannot size their caches from
# free memory (each would count the others'). vLLM's gpu_worker.determine_available_memory returns
# kv_cache_memory_bytes as it is, skipping the utilization-based sizing, but Worker.init_device
# still checks at start that free memory >= gpu_memory_utilization x total (v1/worker/utils.py,
# request_memory): a low utilization keeps that check from failing on the other engines' memory.
KV_CACHE_BYTES = 2 * 1024**3  # ~90k tokens of SmolLM2-135M at bf16; lm-eval runs one request at a time
SHARED_GPU_FLAGS = ["--kv-cache-memory-bytes", str(KV_CACHE_BYTES), "--gpu-memory-utilization", "0.2"]
ENGINE_FLAGS += SHARED_GPU_FLAGS


def prepare_model() -> None:
    """The GGUF converted to safetensors in its own process (see ../shared/gpu/README.md)."""
    if not MODEL_DIR.exists():
        cmd = [sys.executable, "-m", "serve_app.cli", "prepare-model", "--cache-dir", str(compare.CACHE)]
        subprocess.run(cmd, cwd=compare.REPO, check=True)


def url_of(index: int) -> str:
    return f"http://127.0.0.1:{FIRST_PORT + index}"


def spawn(variant: str, flags: list[str], url: str, out: Path) -> subprocess.Popen:
    model = CHECKPOINTS.get(variant, MODEL_DIR)
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)]
    cmd += ["--served-model-name", SERVED_NAME, "--port", url.rsplit(":", 1)[1], *ENGINE_FLAGS, *flags]
    return compare._spawn(cmd, out / f"vllm-{variant}.log", {"CUDA_VISIBLE_DEVICES": "0"})


def score(variant: str, url: str, out: Path, python: str) -> dict[str, dict[str, float]]:
    scores = {}
    for task in TASKS:
        folder = out / "lm-eval" / variant / task
        tokenizer = MODEL_DIR if task == MC_TASK else None
        run = lm_eval_command(task, url, SERVED_NAME, folder, tokenizer=tokenizer, python=python)
        with (out / f"lm-eval-{variant}-{task}.log").open("w") as log:
            env = os.environ | run.env
            subprocess.run(run.argv, cwd=run.cwd, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
        scores[task] = read_scores(folder, task)
        print(variant, task, scores[task], flush=True)
    return scores


def run_variant(variant: str, flags: list[str], url: str, args: argparse.Namespace) -> dict:
    """Serve one variant, score it, and stop it whatever happened: its scores only if its own server
    started and was still the one running when lm-eval finished. Never raises an Exception: a
    failure (the spawn's too) is the result's ``error``, so the other variants' threads go on."""
    started = time.monotonic()
    proc = None
    try:
        proc = spawn(variant, flags, url, args.out)
        compare.wait_for(url + "/health", args.timeout, proc)
        scores = score(variant, url, args.out, args.lm_eval_python)
        if proc.poll() is not None:
            raise RuntimeError(f"the {variant} server exited with {proc.returncode} while it was scored")
        result = {"flags": flags, "scores": scores}
    except Exception as err:  # one variant's failure is recorded, the others still run
        result = {"flags": flags, "error": f"{type(err).__name__}: {err}"}
    finally:
        if proc is not None:
            compare.stop_process(proc)
    return result | {"seconds": round(time.monotonic() - started, 1)}


def run_all(chosen: list[tuple[str, list[str]]], args: argparse.Namespace) -> dict[str, dict]:
    """Every chosen variant at once, a thread each (port by its index), results in the given order."""
    with ThreadPoolExecutor(max_workers=max(1, len(chosen))) as pool:
        futures = [pool.submit(run_variant, v, flags, url_of(i), args) for i, (v, flags) in enumerate(chosen)]
    results = {}
    for (variant, flags), future in zip(chosen, futures, strict=True):
        try:
            results[variant] = future.result()
        except Exception as err:  # stopping the server failed: still a result, the report is written
            results[variant] = {"flags": flags, "error": f"{type(err).__name__}: {err}"}
    return results


def verdicts(results: dict[str, dict], max_drop: float) -> dict[str, dict]:
    """Each FP8 variant against bf16 (serve_app.quantize.lm_eval_verdict.judge, as `serve-app evaluate
    --lm-eval` judges): every metric's change, and pass when none falls more than max_drop."""
    base = results["bf16"]["scores"]
    found = {}
    for variant, result in results.items():
        if variant == "bf16" or "scores" not in result:
            continue
        verdict = judge(result["scores"], base, max_drop)
        found[variant] = {"deltas": verdict.deltas, "passed": verdict.passed}
        if verdict.missing:  # only then: reports without missing metrics keep their shape
            found[variant]["missing"] = verdict.missing
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--lm-eval-python", required=True, help="an interpreter that imports lm_eval")
    parser.add_argument("--timeout", type=float, default=600, help="seconds for each engine to start")
    parser.add_argument("--max-score-drop", type=float, default=MAX_SCORE_DROP)
    parser.add_argument("--variants", default=",".join(v for v, _ in VARIANTS), help="comma-separated subset")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    prepare_model()
    names = args.variants.split(",")
    results = run_all([v for v in VARIANTS if v[0] in names], args)
    report = {
        "model": SERVED_NAME,
        "engine_flags": ENGINE_FLAGS,
        "max_score_drop": args.max_score_drop,
        "variants": results,
        "verdicts": verdicts(results, args.max_score_drop) if "scores" in results.get("bf16", {}) else {},
    }
    (args.out / "lm-eval.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["verdicts"], indent=2))


if __name__ == "__main__":
    main()
