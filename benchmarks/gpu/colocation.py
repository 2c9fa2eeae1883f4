"""Two W8A8 engines on one GPU against one (issue #21): does a second engine fill the time a
saturated engine leaves the GPU idle?

The saturation runs (``benchmarks/results/goodput-saturation/``) found W8A8 keeping the GPU busy
80-92% of the time at saturation, against 90-96% for bf16: W8A8's steps are shorter while the
host's work per step is not. The planner has always put one engine on a GPU, reasoning that a
second engine reads the weights a second time. Both are arguments; this measures it. Per total
concurrency ``c``, each a steady point (the goal's traffic with spread lengths, Poisson arrivals at
1.5x the ninth run's measured throughput near ``c``, at most ``c`` in flight):

* ``single``: one W8A8 engine at ``c``;
* ``pair``: two W8A8 engines on the same GPU, each at ``c/2`` and half the arrival rate, measured
  at the same time; their figures combine as ``colocation_report.combine`` says;
* bf16 alone at ``c``: plain vLLM's defaults, for the ratio the issue asks about.

Every engine has the same fixed KV cache (``saturation.py start``). Each benchmark client runs in a
process of its own, for the single points too, and every run draws prompts no other run draws
(``colocation_report.seed``). While a point runs: the GPU's busy share (``nvidia-smi``) and each
engine's CPU cores (``/proc``).

    python3 saturation.py start --timeout 420 --engines bf16,w8a8,w8a8-b
    python3 colocation.py measure --out $OUT --round 0 --concurrencies 96,128
    python3 colocation.py measure --out $OUT --round 1 --concurrencies 96,128   # reversed order
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import colocation_report
import compare  # this folder's: models, servers, waiting
import goodput  # this folder's: the goal's traffic
import profile_points  # this folder's: steady points
import saturation  # this folder's: the engines and their samples
import saturation_split

VARIANT, TWIN, BASELINE = "w8a8", "w8a8-b", "bf16"
RESULTS = Path("/tmp/colocation")
BENCH_TIMEOUT_S = 420


def _client(name: str, point: profile_points.Point, seed: int, tag: str) -> subprocess.Popen:
    """``vllm bench serve`` against engine ``name``, in a process of its own, saving its result."""
    extra = [*profile_points.point_argv(point), "--seed", str(seed)]  # the later --seed wins
    extra += ["--save-result", "--result-dir", str(RESULTS), "--result-filename", f"{tag}.json"]
    argv = goodput.bench_argv(f"http://127.0.0.1:{saturation.ENGINES[name][3]}", extra)
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(compare.REPO), os.environ.get("PYTHONPATH")]))}
    with open(RESULTS / f"{tag}.log", "w") as log:  # the child keeps its own copy of the handle
        return subprocess.Popen(
            [sys.executable, "-m", "serve_app.engine.bench_serve", *argv], stdout=log, stderr=subprocess.STDOUT, env=env
        )


def _result(tag: str, proc: subprocess.Popen) -> dict:
    try:
        proc.wait(timeout=BENCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        return {"error": f"benchmark still running after {BENCH_TIMEOUT_S} s"}
    path = RESULTS / f"{tag}.json"
    if proc.returncode != 0 or not path.exists():
        tail = (RESULTS / f"{tag}.log").read_text(errors="replace")[-400:]
        return {"error": f"benchmark exited {proc.returncode}: {tail}"}
    saved = json.loads(path.read_text())
    return {key: value for key, value in saved.items() if isinstance(value, int | float)}


def _samples(engines: list[tuple[str, int, int]]) -> dict:
    """Once every engine holds half its slots: the GPU's busy share and each engine's CPU cores
    over saturation.SAMPLE_FOR_S. ``engines``: (name, engine pid, its concurrency)."""
    deadline = time.monotonic() + 60
    for name, _, concurrency in engines:
        port = saturation.ENGINES[name][3]
        while saturation._metric(port, "vllm:num_requests_running") < concurrency / 2 and time.monotonic() < deadline:
            time.sleep(0.2)
    time.sleep(saturation.SETTLE_S)
    query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"]
    smi = subprocess.Popen(query, stdout=subprocess.PIPE, text=True)
    before, t0 = saturation._snapshot(), time.monotonic()
    time.sleep(saturation.SAMPLE_FOR_S)
    after, wall = saturation._snapshot(), time.monotonic() - t0
    smi.terminate()
    lines = smi.communicate(timeout=10)[0].splitlines()
    ticks = os.sysconf("SC_CLK_TCK")
    cores = {}
    for name, pid, _ in engines:
        cores[name] = saturation_split.cores_used(
            saturation._tree_cpu(before, pid), saturation._tree_cpu(after, pid), wall, ticks
        )
    return {"gpu_utilization_pct": saturation_split.mean_utilization(lines), "engine_cores": cores}


def _sample_into(sampled: dict, engines: list[tuple[str, int, int]]) -> None:
    try:
        sampled.update(_samples(engines))
    except Exception as error:  # the point's benchmark figures still count
        sampled["sample_error"] = repr(error)[-300:]


def run_point(mode: str, names: list[str], pids: dict[str, int], point: profile_points.Point, round_no: int) -> dict:
    """One point: ``point`` split evenly over the engines in ``names``, their clients started together."""
    share = len(names)
    each = profile_points.Point(
        "steady", point.concurrency // share, point.prompts // share, round(point.request_rate / share, 2), point.spread
    )
    tags = [f"r{round_no}-{mode}-c{point.concurrency}-{name}" for name in names]
    seeds = [colocation_report.seed(round_no, mode, point.concurrency, i) for i in range(share)]
    sampled: dict = {}
    engines = [(name, pids[name], each.concurrency) for name in names]
    sampler = threading.Thread(target=_sample_into, args=(sampled, engines))
    sampler.start()
    procs = [_client(name, each, s, tag) for name, s, tag in zip(names, seeds, tags, strict=True)]
    per_engine = [_result(tag, proc) for tag, proc in zip(tags, procs, strict=True)]
    sampler.join()
    record: dict = {"mode": mode, "engines": names, "concurrency": point.concurrency, "per_engine_point": each.__dict__}
    record |= {"seeds": seeds, "per_engine": per_engine} | sampled
    errors = [m["error"] for m in per_engine if "error" in m]
    if errors:
        record["error"] = errors[0]
    else:
        record["combined"] = colocation_report.combine(per_engine)
    print(mode, names, point.concurrency, record.get("combined", record.get("error")), sampled, flush=True)
    return record


def _steady(kind: str, concurrency: int, earlier: dict) -> profile_points.Point:
    expected = profile_points.expected_rps(earlier[kind], concurrency, goodput.OUTPUT_TOKENS)
    rate = round(profile_points.STEADY_RATE_FACTOR * expected, 2)
    prompts = saturation.PROMPTS_PER_SLOT * concurrency
    return profile_points.Point("steady", concurrency, prompts, rate, profile_points.STEADY_SPREAD)


def measure(out: Path, round_no: int, concurrencies: list[int]) -> None:
    """At each concurrency: bf16 alone, one W8A8 engine, two; the order reversed in odd rounds."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    state = json.loads(saturation.STATE.read_text())
    pids = {name: engine["pid"] for name, engine in state["engines"].items() if "pid" in engine}
    earlier = json.loads(saturation.EARLIER_PROFILE.read_text())["variants"]
    for name in (BASELINE, VARIANT, TWIN):
        compare.wait_for(f"http://127.0.0.1:{saturation.ENGINES[name][3]}/health", saturation.LATE_START_S)
    runs = [("single", [BASELINE]), ("single", [VARIANT]), ("pair", [VARIANT, TWIN])]
    runs = runs if round_no % 2 == 0 else runs[::-1]
    result = {"round": round_no, "variant": VARIANT, "baseline": BASELINE, "kv_cache_bytes": state["kv_cache_bytes"]}
    result |= {"engines_ready": state["engines"], **saturation._versions(), "points": []}
    for c in concurrencies:
        for mode, names in runs:
            point = _steady(saturation.ENGINES[names[0]][2], c, earlier)
            result["points"].append(run_point(mode, names, pids, point, round_no))
            (out / f"colocation-round{round_no}.json").write_text(json.dumps(result, indent=1))
    saturation.keep_logs(out)
    print("\n".join(colocation_report.table(result)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("phase", choices=["measure"])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/out")))
    parser.add_argument("--round", type=int, default=0)
    parser.add_argument("--concurrencies", default="96,128", help="total requests in flight on the GPU")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    measure(args.out, args.round, [int(c) for c in args.concurrencies.split(",")])


if __name__ == "__main__":
    main()
