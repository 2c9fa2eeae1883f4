"""This stack vs plain vLLM on one GPU, side by side in one run, measured by vLLM's own benchmark.

Phases (each a separate device call on the same warm machine; servers outlive a call because they
are started in their own sessions):

    python benchmarks/gpu/compare.py start  --out $OUT   # model folders, plain vLLM, then the stack
    python benchmarks/gpu/compare.py bench  --out $OUT   # waits for both, then interleaved runs
    python benchmarks/gpu/compare.py tp2    --out $OUT   # stops both, then the stack with TP=2

Both servers share one GPU (a fraction of its memory for each 8B engine), so every pair of
measurements runs on the same machine minutes apart, alternating plain/stack. The stack is measured
through the door it ships with, port 8000: with ``--door haproxy`` (the default, as ``make serve``
and the cluster manifests start Ray) that is Ray Serve's HAProxy, with ``--door ray-proxy`` Ray
Serve's Python proxy; and through the router replica's own port (direct ingress, the first port of
Ray's 30000-31000 range), which skips the door.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
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
FP8_DYNAMIC_DUMMY = Path("/tmp/llama8b-fp8-dynamic-dummy")  # ... with an FP8_DYNAMIC one
W8A8_DUMMY = Path("/tmp/llama8b-w8a8-dummy")  # ... with a W8A8 int8 one
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
        # The process first: a server that died (say, its port was taken) must not pass on the
        # health of whatever else answers that port.
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        if _get(url) == 200:
            return time.monotonic() - started
        time.sleep(3)
    raise TimeoutError(f"{url} not 200 after {timeout_s} s")


def stop_process(proc: subprocess.Popen) -> None:
    """Stop a server started by ``_spawn`` (its own session): TERM, then KILL after a minute."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    full_env = os.environ | GPU_ENV | (env or {})
    return subprocess.Popen(
        cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO, env=full_env
    )


def _stack_env(gpus: str, door: str = "haproxy") -> dict[str, str]:
    # Ray workers (and vLLM's own Ray workers for TP) import serve_app from this checkout.
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), str(REPO)) if p)
    # Throughput-optimized mode for Ray Serve's proxy too (the app sets it for its own replicas,
    # and direct ingress from its config: setting that here as well, against the app's "0",
    # left the router's port answering 404 in run 3).
    env = {"CUDA_VISIBLE_DEVICES": gpus, "PYTHONPATH": path, "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    if door == "haproxy":  # the shipped door (Makefile, cluster/): HAProxy on the HTTP port
        env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    return env


def prepare_models() -> None:
    """SmolLM2 converted in its own process (see ../shared/gpu/README.md), then the 8B-shaped folder."""
    smollm2 = CACHE / "smollm2-135m-instruct"
    if not smollm2.exists():
        subprocess.run([sys.executable, "-m", "serve_app.cli", "prepare-model", "--cache-dir", str(CACHE)], check=True)
    folders = ((DUMMY, []), (AWQ_DUMMY, ["--awq"]), (FP8_DYNAMIC_DUMMY, ["--fp8-dynamic"]), (W8A8_DUMMY, ["--w8a8"]))
    for folder, flags in folders:
        if not folder.exists():
            make = [sys.executable, str(HERE / "make_8b_dummy.py"), str(smollm2), str(folder), *flags]
            subprocess.run(make, check=True)


def start(out: Path, timeout_s: float, tp: int, config: str, plain_memory: float, awq: bool, door: str) -> None:
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
    stack_cmd = [shutil.which("serve") or "serve", "run", str(stack_config)]
    stack = _spawn(stack_cmd, Path("/tmp/stack.log"), _stack_env(gpus, door))
    plain_s = time.monotonic() - started
    stack_s = wait_for(STACK_URL + "/ready", timeout_s, stack)
    print(f"stack ({door}) ready after {stack_s:.0f} s", flush=True)
    (out / "start.json").write_text(json.dumps({"plain_start_s": plain_s, "stack_ready_s": stack_s, "door": door}))


def bench_once(
    base_url: str, concurrency: int, prompts: int, seed: int, model: str = MODEL, length_spread: float = 0.0
) -> dict:
    """512 in / 128 out; with ``length_spread`` r, each request's lengths are drawn uniformly from
    [(1-r) x, (1+r) x] (vLLM's ``--random-range-ratio``), so requests end at different times."""
    argv = ["--backend", "openai", "--base-url", base_url, "--endpoint", "/v1/completions", "--model", model]
    argv += ["--tokenizer", str(DUMMY), "--dataset-name", "random", "--random-input-len", "512"]
    argv += ["--random-range-ratio", str(length_spread)]
    argv += ["--random-output-len", "128", "--ignore-eos", "--num-prompts", str(prompts), "--seed", str(seed)]
    argv += ["--max-concurrency", str(concurrency), "--request-rate", "inf"]
    argv += ["--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,95,99"]
    return vllm_bench.run(argv)


MODEL_SHIPPED = "llama-8b-shipped"  # stack-8b-shipped.yaml: the A100 configs' router and batching settings
MODEL_UNBATCHED = "llama-8b-unbatched"  # the same with router batching off
DOORS = {
    "plain": (PLAIN_URL, MODEL),
    "stack": (STACK_URL, MODEL),
    "stack-direct": (DIRECT_URL, MODEL),
    "stack-batched": (STACK_URL, MODEL_BATCHED),
    "stack-direct-batched": (DIRECT_URL, MODEL_BATCHED),
    "plain-awq": (PLAIN_URL, MODEL_AWQ),  # after `start --awq`
    "stack-direct-awq": (DIRECT_URL, MODEL_AWQ),
    "stack-direct-old-defaults": (DIRECT_URL, MODEL_OLD_DEFAULTS),
    # stack-8b-shipped.yaml: the shipped door (port 8000), the router's own port, batching off
    "shipped": (STACK_URL, MODEL_SHIPPED),
    "shipped-direct": (DIRECT_URL, MODEL_SHIPPED),
    "shipped-unbatched": (STACK_URL, MODEL_UNBATCHED),
}
# (concurrency, prompts, output-length spread); the first is measured on every door, the others
# on the concurrency-64 doors.
PLAN = ((1, 30, 0.0), (64, 320, 0.0), (64, 320, 0.5))


def direct_url(timeout_s: float) -> str:
    """The router replica's own port: the first of Ray's direct-ingress range that answers /ready."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for port in range(30000, 30032):
            if _get(f"http://127.0.0.1:{port}/ready") == 200:
                return f"http://127.0.0.1:{port}"
        time.sleep(3)
    raise TimeoutError("no router answered /ready on ports 30000-30031")


def bench(out: Path, timeout_s: float, rounds: range, doors: list[str], c64_doors: list[str]) -> None:
    ready_s = wait_for(STACK_URL + "/ready", timeout_s)
    wait_for(PLAIN_URL + "/health", 60)
    direct = direct_url(60) if any(DOORS[d][0] == DIRECT_URL for d in doors) else DIRECT_URL
    servers = [(name, direct if DOORS[name][0] == DIRECT_URL else DOORS[name][0], DOORS[name][1]) for name in doors]
    print("front doors:", servers, flush=True)
    results: list[dict] = []
    for r in rounds:
        for i, (concurrency, prompts, spread) in enumerate(PLAN):
            measured = servers if i == 0 else [s for s in servers if s[0] in c64_doors]
            # Odd rounds run the doors in reverse order, so no door always follows the same one.
            for name, url, model in measured if r % 2 == 0 else measured[::-1]:
                # Prompts of their own per door: two doors of one deployment (proxy and direct)
                # must not meet prompts already in its prefix cache (run 2 did; see run 4's README).
                seed = 1000 * r + doors.index(name)
                try:
                    metrics = bench_once(url, concurrency, prompts, seed, model, spread)
                except RuntimeError as err:  # one front door failing must not lose the others' numbers
                    print(name, concurrency, spread, "FAILED", str(err)[-500:], flush=True)
                    continue
                row = {"round": r, "server": name, "concurrency": concurrency, "spread": spread, "seed": seed}
                results.append(row | metrics)
                print(name, concurrency, spread, round(metrics["output_throughput"], 1), flush=True)
                # Written after every run: a call cut by its time limit keeps what it measured.
                payload = {"stack_ready_wait_s": ready_s, "runs": results}
                (out / "results.json").write_text(json.dumps(payload, indent=1))
    (out / "summary.md").write_text(summarize(results))
    print(summarize(results))


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def summarize(results: list[dict]) -> str:
    keys = ["output_throughput", "median_ttft_ms", "median_itl_ms", "p95_itl_ms", "p99_ttft_ms", "mean_e2el_ms"]
    plain = "plain-awq" if any(r["server"] == "plain-awq" for r in results) else "plain"
    names = [n for n in dict.fromkeys(r["server"] for r in results) if n != plain]
    head = "| c | spread | metric | plain vLLM | " + " | ".join(f"{n} | {n} / plain" for n in names) + " |"
    lines = [head, "|" + "---|" * (4 + 2 * len(names))]
    for c, spread in sorted({(r["concurrency"], r.get("spread", 0.0)) for r in results}):
        rows = {
            n: [r for r in results if (r["concurrency"], r.get("spread", 0.0)) == (c, spread) and r["server"] == n]
            for n in (plain, *names)
        }
        if not rows[plain]:
            continue
        for k in keys:
            p = _mean(rows[plain], k)
            cells = " | ".join(
                f"{_mean(rows[n], k):.2f} | {_mean(rows[n], k) / p:.3f}" if rows[n] else "- | -" for n in names
            )
            lines.append(f"| {c} | {spread} | {k} | {p:.2f} | {cells} |")
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
    """Server and Ray logs come back with the results as one tarball (the device returns at most
    8 files), tails only: the transfer is limited."""
    import tarfile

    candidates = [Path("/tmp/plain.log"), Path("/tmp/stack.log"), Path("/tmp/stack-tp2.log")]
    candidates += sorted(Path("/tmp/ray/session_latest/logs/serve").glob("*.log"))
    candidates += sorted(Path("/tmp/ray/session_latest/logs").glob("worker-*.err"))
    staging = Path("/tmp/log-tails")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for path in candidates:
        if path.is_file() and path.stat().st_size:
            (staging / path.name).write_bytes(path.read_bytes()[-200_000:])
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        tar.add(staging, arcname="logs")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("phase", choices=["start", "bench", "tp2", "logs"])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/out")))
    parser.add_argument("--timeout", type=float, default=420)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--first-round", type=int, default=0, help="bench: number of the first round (seeds, order)")
    parser.add_argument("--door", choices=["haproxy", "ray-proxy"], default="haproxy", help="start: port 8000's door")
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
            start(args.out, args.timeout, args.tp, args.config, args.plain_memory, args.awq, args.door)
        elif args.phase == "bench":
            doors = args.doors.split(",")
            rounds = range(args.first_round, args.first_round + args.rounds)
            bench(args.out, args.timeout, rounds, doors, (args.c64_doors or args.doors).split(","))
        elif args.phase == "tp2":
            tp2(args.out, args.timeout)
    finally:
        collect_logs(args.out)


if __name__ == "__main__":
    main()
