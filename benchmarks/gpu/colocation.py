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
process of its own (``vllm_bench.run``), for the single points too, and every run draws prompts no other run draws
(``colocation_report.seed``). While a point runs: the GPU's busy share (``nvidia-smi``) and each
engine's CPU cores (``/proc``).

    python3 saturation.py start --timeout 420 --engines bf16,w8a8,w8a8-b
    python3 colocation.py measure --out $OUT --round 0 --concurrencies 96,128
    python3 colocation.py measure --out $OUT --round 1 --concurrencies 96,128   # reversed order
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import threading
from pathlib import Path

import colocation_report
import compare  # this folder's: models, servers, waiting
import goodput  # this folder's: the goal's traffic
import profile_points  # this folder's: steady points
import saturation  # this folder's: the engines and their samples

VARIANT, TWIN, BASELINE = "w8a8", "w8a8-b", "bf16"
BENCH_TIMEOUT_S = 420


def _bench_into(results: list[dict], index: int, name: str, point: profile_points.Point, seed: int) -> None:
    """``vllm bench serve`` against engine ``name`` in a process of its own (``vllm_bench.run``): its
    figures, or why it failed, into ``results[index]`` (a thread's target)."""
    extra = [*profile_points.point_argv(point), "--seed", str(seed)]  # the later --seed wins
    argv = goodput.bench_argv(f"http://127.0.0.1:{saturation.ENGINES[name][3]}", extra)
    try:
        results[index] = compare.vllm_bench.run(argv, timeout_s=BENCH_TIMEOUT_S)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        results[index] = {"error": f"benchmark failed: {str(error)[-400:]}"}


def _samples(engines: list[tuple[str, int, int]]) -> dict:
    """Once every engine holds half its slots: the GPU's busy share and each engine's CPU cores.
    ``engines``: (name, engine pid, its concurrency). The clients run in processes of their own,
    so this process's cores say nothing about them and are left out."""
    saturation.wait_until_half_full([(saturation.ENGINES[name][3], c) for name, _, c in engines])
    sampled = saturation.sample_busy_and_cores({name: pid for name, pid, _ in engines})
    sampled.pop("client_cores")
    return sampled


def run_point(mode: str, names: list[str], pids: dict[str, int], point: profile_points.Point, round_no: int) -> dict:
    """One point: ``point`` split evenly over the engines in ``names``, their clients started together."""
    share = len(names)
    each = profile_points.Point(
        "steady", point.concurrency // share, point.prompts // share, round(point.request_rate / share, 2), point.spread
    )
    seeds = [colocation_report.seed(round_no, mode, point.concurrency, i) for i in range(share)]
    sampled: dict = {}
    engines = [(name, pids[name], each.concurrency) for name in names]
    per_engine: list[dict] = [{} for _ in names]
    threads = [threading.Thread(target=saturation.sample_into, args=(sampled, functools.partial(_samples, engines)))]
    threads += [
        threading.Thread(target=_bench_into, args=(per_engine, i, name, each, seeds[i])) for i, name in enumerate(names)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    record: dict = {"mode": mode, "engines": names, "concurrency": point.concurrency, "per_engine_point": each.__dict__}
    record |= {"seeds": seeds, "per_engine": per_engine} | sampled
    errors = [m["error"] for m in per_engine if "error" in m]
    if errors:
        record["error"] = errors[0]
    else:
        record["combined"] = colocation_report.combine(per_engine)
    print(mode, names, point.concurrency, record.get("combined", record.get("error")), sampled, flush=True)
    return record


def measure(out: Path, round_no: int, concurrencies: list[int]) -> None:
    """At each concurrency: bf16 alone, one W8A8 engine, two; the order reversed in odd rounds."""
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
            point = saturation.steady_point(saturation.ENGINES[names[0]][2], c, earlier)
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
