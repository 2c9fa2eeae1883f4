"""This stack vs plain vLLM on one GPU, side by side in one run, measured by vLLM's own benchmark.

Phases (each a separate device call on the same warm machine; servers outlive a call because they
are started in their own sessions):

    python benchmarks/gpu/compare.py start  --out $OUT   # model folders, plain vLLM, then the stack
    python benchmarks/gpu/compare.py bench  --out $OUT   # waits for both, then interleaved runs

Both servers share the GPU (0.42 of its memory each), so every pair of measurements runs on the
same machine minutes apart, alternating plain/stack, two rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DUMMY = Path("/tmp/llama8b-dummy")
CACHE = Path("/tmp/mc")
PLAIN_URL = "http://127.0.0.1:8100"
STACK_URL = "http://127.0.0.1:8000"
MODEL = "llama-8b-dummy"


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status
    except Exception:
        return 0


def wait_for(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if _get(url) == 200:
            return time.monotonic() - started
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        time.sleep(3)
    raise TimeoutError(f"{url} not 200 after {timeout_s} s")


def _spawn(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)


def start(out: Path, timeout_s: float, tp: int) -> None:
    subprocess.run([sys.executable, "-m", "serve_app.cli", "prepare-model", "--cache-dir", str(CACHE)], check=True)
    subprocess.run(
        [sys.executable, str(HERE / "make_8b_dummy.py"), str(CACHE / "smollm2-135m-instruct"), str(DUMMY)], check=True
    )
    plain = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(DUMMY)]
    plain += ["--served-model-name", MODEL, "--load-format", "dummy", "--dtype", "bfloat16", "--port", "8100"]
    plain += ["--gpu-memory-utilization", "0.42", "--max-model-len", "4096", "--tensor-parallel-size", str(tp)]
    started = time.monotonic()
    proc = _spawn(plain, Path("/tmp/plain.log"))
    print(f"plain vLLM healthy after {wait_for(PLAIN_URL + '/health', timeout_s, proc):.0f} s", flush=True)
    stack_config = HERE / ("stack-8b-dummy.yaml" if tp == 1 else f"stack-8b-dummy-tp{tp}.yaml")
    _spawn([shutil.which("serve") or "serve", "run", str(stack_config)], Path("/tmp/stack.log"))
    (out / "start.json").write_text(json.dumps({"plain_start_s": time.monotonic() - started}))


def bench_once(base_url: str, concurrency: int, prompts: int, seed: int) -> dict:
    argv = ["--backend", "openai", "--base-url", base_url, "--endpoint", "/v1/completions", "--model", MODEL]
    argv += ["--tokenizer", str(DUMMY), "--dataset-name", "random", "--random-input-len", "512"]
    argv += ["--random-output-len", "128", "--ignore-eos", "--num-prompts", str(prompts), "--seed", str(seed)]
    argv += ["--max-concurrency", str(concurrency), "--request-rate", "inf"]
    argv += ["--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,95,99"]
    proc = subprocess.run(
        [sys.executable, str(HERE / "vllm_bench.py"), *argv], capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    text = proc.stdout
    return json.loads(text[text.rindex("\n{") + 1 :])


def bench(out: Path, timeout_s: float, rounds: int) -> None:
    ready_s = wait_for(STACK_URL + "/ready", timeout_s)
    wait_for(PLAIN_URL + "/health", 60)
    results: list[dict] = []
    plan = [(1, 40), (64, 320)]
    for r in range(rounds):
        for concurrency, prompts in plan:
            for name, url in (("plain", PLAIN_URL), ("stack", STACK_URL)):
                metrics = bench_once(url, concurrency, prompts, seed=r)
                results.append({"round": r, "server": name, "concurrency": concurrency} | metrics)
                print(name, concurrency, round(metrics["output_throughput"], 1), flush=True)
    (out / "results.json").write_text(json.dumps({"stack_ready_wait_s": ready_s, "runs": results}, indent=1))
    (out / "summary.md").write_text(summarize(results))
    print(summarize(results))


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def summarize(results: list[dict]) -> str:
    keys = ["output_throughput", "median_ttft_ms", "median_tpot_ms", "median_itl_ms", "p99_ttft_ms"]
    lines = ["| concurrency | metric | plain vLLM | this stack | stack / plain |", "|---|---|---|---|---|"]
    for c in sorted({r["concurrency"] for r in results}):
        plain = [r for r in results if r["concurrency"] == c and r["server"] == "plain"]
        stack = [r for r in results if r["concurrency"] == c and r["server"] == "stack"]
        for k in keys:
            p, s = _mean(plain, k), _mean(stack, k)
            lines.append(f"| {c} | {k} | {p:.2f} | {s:.2f} | {s / p:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("phase", choices=["start", "bench"])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/out")))
    parser.add_argument("--timeout", type=float, default=420)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tp", type=int, default=1, help="tensor parallel size of both servers")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.phase == "start":
        start(args.out, args.timeout, args.tp)
    else:
        bench(args.out, args.timeout, args.rounds)


if __name__ == "__main__":
    main()
