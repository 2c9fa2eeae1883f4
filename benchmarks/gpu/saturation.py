"""Where a saturated engine's time goes on one GPU (issue #21): is plain bf16 or W8A8 on the 8B
shape bound by GPU kernels or by the host, and do engine settings move its ceiling?

The ninth goodput run found every quantized variant (FP8, FP8 with FP8 KV, W8A8) topping out near
the same output tokens/s, about 1.3x bf16's; 1.5x would need more. This measures, per engine at
steady load (the goal's traffic, spread lengths, the profile's steady arrivals):

* throughput, TTFT and TPOT (``vllm bench serve``, in this process);
* the GPU's busy share from ``nvidia-smi`` samples, unperturbed by a profiler;
* CPU cores used by the API server, the engine core and this benchmark client (``/proc``);
* a torch profiler trace of 60 engine steps (vLLM's ``/start_profile``): busy share and kernel
  time per category (``saturation_split.py``);
* preemptions (the engine's ``/metrics``), so a KV cache too small for the load shows.

Engines (all on the 8B shape with dummy weights; plain vLLM servers, one per port, started together
with fixed KV caches): bf16 and W8A8 as profiled before; W8A8 with an FP8 KV cache (attention reads
half the bytes); W8A8 streaming every 8th token (``--stream-interval 8``: less host work per token,
the first token still at once); W8A8 with ``--performance-mode throughput`` (twice the batched
tokens and sequences). ``--engines`` picks them. The points at each concurrency are clean; a
shorter run at the last concurrency after them is the profiled one.

    python3 saturation.py start --timeout 420          # one device call: engines up
    python3 saturation.py measure --out $OUT           # the next: each engine in turn
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gzip
import json
import os
import re
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import compare  # this folder's: models, servers, waiting
import goodput  # this folder's: plain vLLM servers and the goal's traffic
import profile_points  # this folder's: steady points
import saturation_split

GIB = 1024**3
ENGINE_GPU_SHARE = "0.1"  # passes vLLM's free-memory check with others starting; KV size is fixed below
KV_CAP_BYTES = 24 * GIB  # c=256 of the goal's spread lengths needs about 20 GiB of bf16 KV
WEIGHTS_GIB = {"bf16": 13.8, "w8a8": 7.3}
OVERHEAD_GIB = 3.0  # activations and CUDA graphs per engine
PROFILER_STEPS = 60
PROFILE_DIR = Path("/tmp/prof")
STATE = Path("/tmp/saturation.json")
CONCURRENCIES = (128, 256)
PROMPTS_PER_SLOT = 6  # a steady window long enough for the samples below
PROFILED_PROMPTS_PER_SLOT = 4
SETTLE_S, SAMPLE_FOR_S = 2.0, 6.0
LATE_START_S = 120  # measure waits this long for an engine that was not ready when start returned
# r9's profile: its points set each engine's steady arrival rate (profile_points.expected_rps)
EARLIER_PROFILE = compare.HERE.parent / "results" / "goodput-h200-r9" / "profile.json"
W8A8 = ["--dtype", "bfloat16"]
ENGINES = {  # name: (model folder, flags, weights kind, port)
    "bf16": (compare.DUMMY, ["--dtype", "bfloat16"], "bf16", 8100),
    "w8a8": (compare.W8A8_DUMMY, W8A8, "w8a8", 8101),
    # died under its first load on vLLM 0.26 (EngineDeadError; benchmarks/results/goodput-saturation)
    "w8a8-stream8": (compare.W8A8_DUMMY, [*W8A8, "--stream-interval", "8"], "w8a8", 8102),
    "w8a8-throughput": (compare.W8A8_DUMMY, [*W8A8, "--performance-mode", "throughput"], "w8a8", 8103),
    "w8a8-fp8kv": (compare.W8A8_DUMMY, [*W8A8, "--kv-cache-dtype", "fp8"], "w8a8", 8104),
    # a second W8A8 engine on the same GPU, for colocation.py
    "w8a8-b": (compare.W8A8_DUMMY, W8A8, "w8a8", 8105),
}


def _profiler_flag(name: str) -> list[str]:
    config = {"profiler": "torch", "torch_profiler_dir": str(PROFILE_DIR / name), "torch_profiler_with_stack": False}
    config |= {"ignore_frontend": True, "max_iterations": PROFILER_STEPS}
    return ["--profiler-config", json.dumps(config)]


def kv_bytes(total_bytes: int, names: list[str]) -> int:
    """Each engine's KV cache: an equal share of 92% of the GPU after weights and overheads, at most KV_CAP_BYTES."""
    weights = sum(WEIGHTS_GIB[ENGINES[name][2]] + OVERHEAD_GIB for name in names) * GIB
    return int(min(KV_CAP_BYTES, (0.92 * total_bytes - weights) / len(names)))


def start(timeout_s: float, names: list[str]) -> None:
    compare.stop_servers()
    compare.prepare_models()
    kv = kv_bytes(goodput._gpu_memory_bytes(), names)
    procs = {}
    for name in names:
        model, flags, _, port = ENGINES[name]
        extra = [*flags, "--kv-cache-memory-bytes", str(kv), "--gpu-memory-utilization", ENGINE_GPU_SHARE]
        procs[name] = goodput._plain(port, [*extra, *_profiler_flag(name)], f"/tmp/sat-{name}.log", model)
    started = time.monotonic()
    ready = {}
    for name, proc in procs.items():
        ready[name] = {"pid": proc.pid}
        try:
            left = max(1.0, timeout_s - (time.monotonic() - started))
            compare.wait_for(f"http://127.0.0.1:{ENGINES[name][3]}/health", left, proc)
            ready[name]["ready_s"] = round(time.monotonic() - started, 1)
        except Exception as error:  # the others are still measured; measure waits again
            ready[name]["error"] = str(error)[-300:]
        print(name, ready[name], flush=True)
    STATE.write_text(json.dumps({"kv_cache_bytes": kv, "engines": ready}, indent=1))


def _snapshot() -> tuple[dict[int, int], dict[int, tuple[str, float]]]:
    """Every process's parent, and its command and CPU ticks."""
    parents, cpu = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent, command, ticks = saturation_split.parse_stat((entry / "stat").read_text())
            except (OSError, ValueError, IndexError):
                continue
            parents[int(entry.name)], cpu[int(entry.name)] = parent, (command, ticks)
    return parents, cpu


def _tree_cpu(snapshot: tuple[dict[int, int], dict[int, tuple[str, float]]], root: int) -> dict:
    parents, cpu = snapshot
    return {pid: cpu[pid] for pid in saturation_split.descendants(parents, root) if pid in cpu}


def _metric(port: int, prefix: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def _post(port: int, path: str) -> None:
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST"), timeout=120)


def wait_until_half_full(loads: list[tuple[int, int]]) -> None:
    """Until each engine (its port, its concurrency) runs half its slots, 60 s at most, then SETTLE_S."""
    deadline = time.monotonic() + 60
    for port, concurrency in loads:
        while _metric(port, "vllm:num_requests_running") < concurrency / 2 and time.monotonic() < deadline:
            time.sleep(0.2)
    time.sleep(SETTLE_S)


def sample_busy_and_cores(pids: dict[str, int]) -> dict:
    """Over SAMPLE_FOR_S: the GPU's busy share (``nvidia-smi`` every 100 ms), the CPU cores of each
    named process tree (by its root pid) and of this process."""
    smi = subprocess.Popen(
        ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"],
        stdout=subprocess.PIPE,
        text=True,
    )
    before, cpu_before, t0 = _snapshot(), time.process_time(), time.monotonic()
    time.sleep(SAMPLE_FOR_S)
    after, cpu_after, wall = _snapshot(), time.process_time(), time.monotonic() - t0
    smi.terminate()
    lines = smi.communicate(timeout=10)[0].splitlines()
    ticks = os.sysconf("SC_CLK_TCK")
    cores = {}
    for name, pid in pids.items():
        cores[name] = saturation_split.cores_used(_tree_cpu(before, pid), _tree_cpu(after, pid), wall, ticks)
    result = {"gpu_utilization_pct": saturation_split.mean_utilization(lines), "engine_cores": cores}
    return result | {"client_cores": round((cpu_after - cpu_before) / wall, 3)}


def sample_into(sampled: dict, sample: Callable[[], dict]) -> None:
    """``sample()``'s figures into ``sampled`` (a thread's target), or why it failed: the point's
    benchmark figures still count."""
    try:
        sampled.update(sample())
    except Exception as error:
        sampled["sample_error"] = repr(error)[-300:]


def _samples(port: int, pid: int, concurrency: int, profile: bool) -> dict:
    """During a running point, once the engine holds half its slots: GPU utilization and CPU cores
    over SAMPLE_FOR_S, then (``profile``) PROFILER_STEPS profiled engine steps."""
    wait_until_half_full([(port, concurrency)])
    result = sample_busy_and_cores({"engine": pid})
    result["engine_cores"] = result["engine_cores"]["engine"]
    result["running_at_end"] = _metric(port, "vllm:num_requests_running")
    if profile:
        _post(port, "/start_profile")
    return result


def _point(name: str, pid: int, point: profile_points.Point, profile: bool) -> dict:
    """One steady point's benchmark figures, with samples taken while it runs (``profile``: and
    PROFILER_STEPS profiled engine steps after them, which stall the engine while the trace is
    written, so such a point's figures describe the profiler too)."""
    port = ENGINES[name][3]
    preempted = _metric(port, "vllm:num_preemptions_total")
    sampled: dict = {}
    sample = functools.partial(_samples, port, pid, point.concurrency, profile)
    sampler = threading.Thread(target=sample_into, args=(sampled, sample))
    sampler.start()
    figures = goodput._bench(f"http://127.0.0.1:{port}", profile_points.point_argv(point))
    sampler.join()
    record = profile_points.record(point, figures, None) | sampled
    record |= {"request_throughput": round(figures["request_throughput"], 2), "failed": figures.get("failed", 0)}
    record["preemptions"] = _metric(port, "vllm:num_preemptions_total") - preempted
    print(name, record, flush=True)
    return record


def steady_point(kind: str, concurrency: int, earlier: dict) -> profile_points.Point:
    """PROMPTS_PER_SLOT x ``concurrency`` prompts, Poisson arrivals at the steady factor over what
    ``earlier`` (a profile's variants) measured for weights ``kind`` near ``concurrency``."""
    expected = profile_points.expected_rps(earlier[kind], concurrency, goodput.OUTPUT_TOKENS)
    rate = round(profile_points.STEADY_RATE_FACTOR * expected, 2)
    prompts = PROMPTS_PER_SLOT * concurrency
    return profile_points.Point("steady", concurrency, prompts, rate, profile_points.STEADY_SPREAD)


def measure_engine(name: str, pid: int, earlier: dict, concurrencies: list[int]) -> dict:
    """Clean points at each concurrency, then a shorter one at the last that is profiled."""
    points = [steady_point(ENGINES[name][2], c, earlier) for c in concurrencies]
    measured = [_point(name, pid, point, profile=False) for point in points]
    profiled_point = dataclasses.replace(points[-1], prompts=PROFILED_PROMPTS_PER_SLOT * points[-1].concurrency)
    profiled = _point(name, pid, profiled_point, profile=True)
    _post(ENGINES[name][3], "/stop_profile")
    return {"points": measured, "profiled_run": profiled, "kernels": _kernel_split(name)}


def _kernel_split(name: str) -> dict:
    deadline = time.monotonic() + 120  # the trace is written when the profiled steps end
    while time.monotonic() < deadline:
        traces = sorted((PROFILE_DIR / name).glob("**/*.pt.trace.json*"))
        if traces and time.time() - traces[-1].stat().st_mtime > 5:  # fully written
            opener = gzip.open if traces[-1].suffix == ".gz" else open
            with opener(traces[-1], "rt") as handle:
                return {"trace": traces[-1].name} | saturation_split.kernel_split(json.load(handle))
        time.sleep(2)
    return {"error": f"no trace under {PROFILE_DIR / name} in 120 s"}


def _versions() -> dict:
    import vllm

    query = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]
    gpu = subprocess.run(query, capture_output=True, text=True, check=False).stdout.strip()
    return {"vllm": vllm.__version__, "gpu": gpu}


def measure(out: Path, names: list[str], round_no: int, concurrencies: list[int]) -> None:
    """Each engine in ``names``' order (the caller alternates it between rounds)."""
    state = json.loads(STATE.read_text())
    earlier = json.loads(EARLIER_PROFILE.read_text())["variants"]
    results = {"round": round_no, "order": names, "kv_cache_bytes": state["kv_cache_bytes"]}
    results |= {"engines_ready": state["engines"], **_versions(), "engines": {}}
    for name in names:
        engine = state["engines"].get(name, {})
        try:
            compare.wait_for(f"http://127.0.0.1:{ENGINES[name][3]}/health", LATE_START_S)
            measured = measure_engine(name, engine["pid"], earlier, concurrencies)
            results["engines"][name] = {"flags": ENGINES[name][1]} | measured
        except Exception as error:  # the next engine is still measured
            results["engines"][name] = {"error": repr(error)[-400:]}
        (out / f"saturation-round{round_no}.json").write_text(json.dumps(results, indent=1))
    keep_logs(out)
    for name in ENGINES:
        for table in sorted((PROFILE_DIR / name).glob("*profiler_out*.txt")):  # vLLM names it by version
            (out / f"profiler-{name}.txt").write_text(table.read_text()[:200_000])


def keep_logs(out: Path) -> None:
    """Each engine's log under ``out``, its head and tail where it is long (the head holds start-up
    and the first error)."""
    for name in ENGINES:
        log = Path(f"/tmp/sat-{name}.log")
        if log.exists():
            text = re.sub(r"\n{3,}", "\n\n", log.read_text(errors="replace"))
            kept = text if len(text) < 400_000 else f"{text[:100_000]}\n[... cut ...]\n{text[-300_000:]}"
            (out / f"sat-{name}.log").write_text(kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("phase", choices=["start", "measure"])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/out")))
    parser.add_argument("--timeout", type=float, default=420)
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated, in the order measured")
    parser.add_argument("--concurrencies", default=",".join(map(str, CONCURRENCIES)), help="the last is profiled")
    parser.add_argument("--round", type=int, default=0, help="measure: the round number (its file's name)")
    args = parser.parse_args()
    if args.phase == "start":
        start(args.timeout, args.engines.split(","))
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        measure(args.out, args.engines.split(","), args.round, [int(c) for c in args.concurrencies.split(",")])


if __name__ == "__main__":
    main()
