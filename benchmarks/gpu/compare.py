"""This stack vs plain vLLM on one GPU, side by side in one run, measured by vLLM's own benchmark.

Phases (each a separate device call on the same warm machine; servers outlive a call because they
are started in their own sessions):

    python benchmarks/gpu/compare.py start  --out $OUT   # model folders, plain vLLM, then the stack
    python benchmarks/gpu/compare.py bench  --out $OUT   # waits for both, then interleaved runs
    python benchmarks/gpu/compare.py tp2    --out $OUT   # stops both, then the stack with TP=2

Both servers share one GPU (0.3 of its memory for each 8B engine), so every pair of measurements runs on the
same machine minutes apart, alternating plain/stack, two rounds. The stack is measured through two
front doors of the same deployment: Ray Serve's HTTP proxy (port 8000) and Ray Serve's direct
ingress (``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``: the router replica serves HTTP itself, on the
first port of Ray's 30000-31000 range), which removes one process hop from every request.
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

import vllm_bench  # this folder's: the script runs from here

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DUMMY = Path("/tmp/llama8b-dummy")
AWQ_DUMMY = Path("/tmp/llama8b-awq-dummy")  # the same shape with an AWQ int4 quantization_config
CACHE = Path("/tmp/mc")
PLAIN_URL = "http://127.0.0.1:8100"
STACK_URL = "http://127.0.0.1:8000"
DIRECT_URL = "http://127.0.0.1:30000"
MODEL = "llama-8b-dummy"
# The same weights behind the stack's router batching (benchmarks/gpu/stack-8b-dummy.yaml): at
# concurrency 64 a batch's chunks travel replica -> router as one Ray message per engine step.
MODEL_BATCHED = "llama-8b-dummy-batched"
MODEL_AWQ = "llama-8b-awq-dummy"
# stack-8b-defaults.yaml: the batched engine pinned to the batch defaults the stack had before it
# asked vLLM for `vllm serve`'s (2048 tokens, 128 sequences; serve_app.engine.vllm_engine).
MODEL_OLD_DEFAULTS = "llama-8b-dummy-old-defaults"
# Every process here: NVLink multicast stays off on lent machines (their KINDS.md says why).
GPU_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


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


def _spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    full_env = os.environ | GPU_ENV | (env or {})
    return subprocess.Popen(
        cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO, env=full_env
    )


def _stack_env(gpus: str) -> dict[str, str]:
    # Ray workers (and vLLM's own Ray workers for TP) import serve_app from this checkout.
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), str(REPO)) if p)
    # Throughput-optimized mode for Ray Serve's proxy too (the app sets it for its own replicas,
    # and direct ingress from its config: setting that here as well, against the app's "0",
    # left the router's port answering 404 in run 3).
    return {"CUDA_VISIBLE_DEVICES": gpus, "PYTHONPATH": path, "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


def prepare_models() -> None:
    """SmolLM2 converted in its own process (see ../shared/gpu/README.md), then the 8B-shaped folder."""
    if not DUMMY.exists():
        subprocess.run([sys.executable, "-m", "serve_app.cli", "prepare-model", "--cache-dir", str(CACHE)], check=True)
        smollm2 = CACHE / "smollm2-135m-instruct"
        subprocess.run([sys.executable, str(HERE / "make_8b_dummy.py"), str(smollm2), str(DUMMY)], check=True)
        make = [sys.executable, str(HERE / "make_8b_dummy.py"), str(smollm2), str(AWQ_DUMMY), "--awq"]
        subprocess.run(make, check=True)


def start(out: Path, timeout_s: float, tp: int, config: str, plain_memory: float, awq: bool) -> None:
    """Plain vLLM, then the stack (servers of an earlier start are stopped first). With ``awq``
    both serve the AWQ int4 folder (the stack through stack-8b-awq-dummy.yaml)."""
    stop_servers()
    prepare_models()
    folder, name, dtype = (AWQ_DUMMY, MODEL_AWQ, "float16") if awq else (DUMMY, MODEL, "bfloat16")
    plain = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder)]
    plain += ["--served-model-name", name, "--load-format", "dummy", "--dtype", dtype, "--port", "8100"]
    plain += ["--gpu-memory-utilization", str(plain_memory), "--max-model-len", "4096"]
    plain += ["--tensor-parallel-size", str(tp)]
    started = time.monotonic()
    proc = _spawn(plain, Path("/tmp/plain.log"), {"CUDA_VISIBLE_DEVICES": "0"})
    print(f"plain vLLM healthy after {wait_for(PLAIN_URL + '/health', timeout_s, proc):.0f} s", flush=True)
    config = "stack-8b-awq-dummy.yaml" if awq else config
    stack_config = HERE / (config if tp == 1 else f"stack-8b-dummy-tp{tp}.yaml")
    gpus = ",".join(str(i) for i in range(tp))
    _spawn([shutil.which("serve") or "serve", "run", str(stack_config)], Path("/tmp/stack.log"), _stack_env(gpus))
    (out / "start.json").write_text(json.dumps({"plain_start_s": time.monotonic() - started}))


def bench_once(base_url: str, concurrency: int, prompts: int, seed: int, model: str = MODEL) -> dict:
    argv = ["--backend", "openai", "--base-url", base_url, "--endpoint", "/v1/completions", "--model", model]
    argv += ["--tokenizer", str(DUMMY), "--dataset-name", "random", "--random-input-len", "512"]
    argv += ["--random-output-len", "128", "--ignore-eos", "--num-prompts", str(prompts), "--seed", str(seed)]
    argv += ["--max-concurrency", str(concurrency), "--request-rate", "inf"]
    argv += ["--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,95,99"]
    return vllm_bench.run(argv)


DOORS = {
    "plain": (PLAIN_URL, MODEL),
    "stack": (STACK_URL, MODEL),
    "stack-direct": (DIRECT_URL, MODEL),
    "stack-batched": (STACK_URL, MODEL_BATCHED),
    "stack-direct-batched": (DIRECT_URL, MODEL_BATCHED),
    "plain-awq": (PLAIN_URL, MODEL_AWQ),  # after `start --awq`
    "stack-direct-awq": (DIRECT_URL, MODEL_AWQ),
    "stack-direct-old-defaults": (DIRECT_URL, MODEL_OLD_DEFAULTS),
}
# stack-8b-modes.yaml: one application per Ray Serve setting, each reached on its router replica's
# own port (direct ingress), under its route prefix.
MODE_PREFIXES = {
    "mode-on": "",
    "mode-off": "/mode-off",
    "mode-grpc-off": "/mode-grpc-off",
    "mode-own-thread": "/mode-own-thread",
}


def door_url(name: str, timeout_s: float) -> tuple[str, str]:
    """Base URL and model of a front door; a mode door's port is the one whose router answers
    under its prefix (each application's router replica took the next free port from 30000)."""
    if name not in MODE_PREFIXES:
        return DOORS[name]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for port in range(30000, 30032):
            url = f"http://127.0.0.1:{port}{MODE_PREFIXES[name]}"
            if _get(url + "/ready") == 200:
                return url, MODEL
        time.sleep(3)
    raise TimeoutError(f"no router answered {MODE_PREFIXES[name]}/ready on ports 30000-30031")


def bench(out: Path, timeout_s: float, rounds: int, doors: list[str], c64_doors: list[str]) -> None:
    ready_s = wait_for(STACK_URL + "/ready", timeout_s)
    wait_for(PLAIN_URL + "/health", 60)
    if any(DOORS.get(d, ("",))[0] == DIRECT_URL for d in doors):
        wait_for(DIRECT_URL + "/ready", 60)
    results: list[dict] = []
    servers = [(name, *door_url(name, 120)) for name in doors]
    print("front doors:", servers, flush=True)
    plan = [(1, 30, servers), (64, 320, [s for s in servers if s[0] in c64_doors])]
    for r in range(rounds):
        for concurrency, prompts, measured in plan:
            # Odd rounds run the doors in reverse order, so no door always follows the same one.
            for name, url, model in measured if r % 2 == 0 else measured[::-1]:
                # Prompts of their own per door: two doors of one deployment (proxy and direct)
                # must not meet prompts already in its prefix cache (run 2 did; see run 4's README).
                seed = 1000 * r + doors.index(name)
                try:
                    metrics = bench_once(url, concurrency, prompts, seed=seed, model=model)
                except RuntimeError as err:  # one front door failing must not lose the others' numbers
                    print(name, concurrency, "FAILED", str(err)[-500:], flush=True)
                    continue
                results.append({"round": r, "server": name, "concurrency": concurrency, "seed": seed} | metrics)
                print(name, concurrency, round(metrics["output_throughput"], 1), flush=True)
                # Written after every run: a call cut by its time limit keeps what it measured.
                payload = {"stack_ready_wait_s": ready_s, "runs": results}
                (out / "results.json").write_text(json.dumps(payload, indent=1))
    (out / "results.json").write_text(json.dumps({"stack_ready_wait_s": ready_s, "runs": results}, indent=1))
    (out / "summary.md").write_text(summarize(results))
    print(summarize(results))


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def summarize(results: list[dict]) -> str:
    keys = ["output_throughput", "median_ttft_ms", "median_tpot_ms", "median_itl_ms", "p99_ttft_ms"]
    doors = (*(d for d in DOORS if d.startswith("stack")), *MODE_PREFIXES)
    names = [n for n in doors if any(r["server"] == n for r in results)]
    plain = "plain-awq" if any(r["server"] == "plain-awq" for r in results) else "plain"
    head = "| concurrency | metric | plain vLLM | " + " | ".join(f"{n} | {n} / plain" for n in names) + " |"
    lines = [head, "|" + "---|" * (3 + 2 * len(names))]
    for c in sorted({r["concurrency"] for r in results}):
        rows = {n: [r for r in results if r["concurrency"] == c and r["server"] == n] for n in (plain, *names)}
        if not rows[plain]:
            continue
        for k in keys:
            p = _mean(rows[plain], k)
            cells = " | ".join(
                f"{_mean(rows[n], k):.2f} | {_mean(rows[n], k) / p:.3f}" if rows[n] else "failed | -" for n in names
            )
            lines.append(f"| {c} | {k} | {p:.2f} | {cells} |")
    return "\n".join(lines) + "\n"


def stop_servers() -> None:
    if ray := shutil.which("ray"):
        subprocess.run([ray, "stop", "--force"], capture_output=True)
    subprocess.run(["pkill", "-f", "[a]pi_server"], capture_output=True)
    time.sleep(5)
    # `ray stop --force` kills the replicas but not their vLLM engine-core children, which then
    # hold their GPU memory (run 5: the next stack found 2.8 of 140 GiB free); nothing else may run.
    subprocess.run(["pkill", "-9", "-f", "VLLM::"], capture_output=True)
    time.sleep(3)


def tp2(out: Path, timeout_s: float) -> None:
    """The stack alone with one TP=2 replica on both GPUs: start time, pre-flight, a short bench."""
    stop_servers()
    prepare_models()
    started = time.monotonic()
    config = HERE / "stack-8b-dummy-tp2.yaml"
    proc = _spawn([shutil.which("serve") or "serve", "run", str(config)], Path("/tmp/stack-tp2.log"), _stack_env("0,1"))
    ready_s = wait_for(STACK_URL + "/ready", timeout_s, proc)
    print(f"TP=2 stack ready after {ready_s:.0f} s", flush=True)
    runs = []
    for concurrency, prompts in ((1, 20), (32, 160)):
        metrics = bench_once(STACK_URL, concurrency, prompts, seed=0)
        runs.append({"server": "stack-tp2", "concurrency": concurrency} | metrics)
        print("stack-tp2", concurrency, round(metrics["output_throughput"], 1), flush=True)
    payload = {"ready_after_s": ready_s, "start_wall_s": time.monotonic() - started, "runs": runs}
    (out / "tp2.json").write_text(json.dumps(payload, indent=1))


def collect_logs(out: Path) -> None:
    """Server and Ray logs come back with the results (tails only: the transfer is limited)."""
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    candidates = [Path("/tmp/plain.log"), Path("/tmp/stack.log"), Path("/tmp/stack-tp2.log")]
    candidates += sorted(Path("/tmp/ray/session_latest/logs/serve").glob("*.log"))
    candidates += sorted(Path("/tmp/ray/session_latest/logs").glob("worker-*.err"))
    for path in candidates:
        if path.is_file() and path.stat().st_size:
            (logs / path.name).write_bytes(path.read_bytes()[-200_000:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("phase", choices=["start", "bench", "tp2", "logs"])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/out")))
    parser.add_argument("--timeout", type=float, default=420)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--doors", default=",".join(DOORS), help="comma-separated front doors to measure")
    parser.add_argument("--c64-doors", help="the doors also measured at concurrency 64 (default: all)")
    parser.add_argument("--config", default="stack-8b-dummy.yaml", help="the stack's serve config, in this folder")
    parser.add_argument("--plain-memory", type=float, default=0.3, help="plain vLLM's gpu_memory_utilization")
    parser.add_argument("--awq", action="store_true", help="start: both servers on the AWQ int4 folder")
    parser.add_argument("--tp", type=int, default=1, help="tensor parallel size of both servers")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        if args.phase == "start":
            start(args.out, args.timeout, args.tp, args.config, args.plain_memory, args.awq)
        elif args.phase == "bench":
            doors = args.doors.split(",")
            bench(args.out, args.timeout, args.rounds, doors, (args.c64_doors or args.doors).split(","))
        elif args.phase == "tp2":
            tp2(args.out, args.timeout)
    finally:
        collect_logs(args.out)


if __name__ == "__main__":
    main()
