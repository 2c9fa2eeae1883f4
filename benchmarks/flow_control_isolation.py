"""Where B's TTFT goes when A is served on this 2-core machine: two diagnostics beside
``benchmarks.flow_control``'s noisy neighbour (same request shapes, rates, door and flow settings).

    python -m benchmarks.flow_control_isolation split --phase-s 60 --out split-r1.json
    python -m benchmarks.flow_control_isolation hog --phase-s 60 --out hog-r1.json

``split``: A and B on engines of their own. The app serves the embedded model twice, as
``smollm2-a`` (A's requests) and ``smollm2-b`` (B's), each engine's OpenMP worker bound to a core of
its own (``VLLM_CPU_OMP_THREADS_BIND``: A core 1, B core 0, where vLLM's automatic binding puts
both on core 0). Phases: B alone; A's flood with A's engine at Ray's worker niceness (the phase
``a_flood_nice_0``: its name predates ``--ray-worker-niceness``, whose default here, 15, is Ray's);
the same with every thread of A's replica and engine processes at nice 19 (set from outside with
``setpriority``; the stack has no such setting); then under the SCHED_IDLE policy; B alone again.
What isolating A's engine, and then ranking its CPU below B's, leaves of B's TTFT cost.

``hog``: no tenant A. B alone on the noisy neighbour's own stack (one engine), and B beside one
busy-looping process that sends no request, at nice 0, at nice 19 and under SCHED_IDLE: what one core taken away
costs B, without any request of A's in the router, the door or the engine.

Each phase records the CPU seconds per process over the phase (its top consumers, as cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

import benchmarks.flow_control as noisy
from serve_app.bench.provenance import commit, module_command

REPO = Path(__file__).resolve().parents[1]
A_MODEL, B_MODEL = "smollm2-a", "smollm2-b"
HOG = [sys.executable, "-c", "while True: pass"]
TOP_PROCESSES = 12


def split_config(a_tokens_per_minute: int, batch_max_in_flight: int) -> dict[str, Any]:
    """The noisy neighbour's app with the model served twice, A's engine on core 1, B's on core 0."""
    config = noisy.app_config(a_tokens_per_minute, batch_max_in_flight)
    (model,) = config["models"]
    return config | {"models": [noisy.bound_model(model, A_MODEL, "1"), noisy.bound_model(model, B_MODEL, "0")]}


def cpu_seconds() -> dict[int, tuple[str, float]]:
    out: dict[int, tuple[str, float]] = {}
    for proc in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        times = proc.info["cpu_times"]
        if times is not None:
            name = " ".join(proc.info["cmdline"] or [proc.info["name"] or "?"])[:80]
            out[proc.pid] = (name, times.user + times.system)
    return out


def measured_phase(url: str, flood_key: str | None, capacity: float, seconds: float) -> dict[str, Any]:
    """``noisy.phase`` plus each process's CPU use over it, in cores (the top consumers)."""
    before, started = cpu_seconds(), time.monotonic()
    result = noisy.phase(url, flood_key, capacity, seconds)
    out = asyncio.run(result)
    after, elapsed = cpu_seconds(), time.monotonic() - started
    use = [(round((t - before.get(pid, (n, 0.0))[1]) / elapsed, 3), pid, n) for pid, (n, t) in after.items()]
    out["cpu_cores_by_process"] = sorted(use, reverse=True)[:TOP_PROCESSES]
    return out


def renice_tree(proc: psutil.Process, nice: int) -> list[dict[str, Any]]:
    """Every thread of ``proc`` and its descendants to ``nice`` (a process's own nice is per thread)."""
    done = []
    for member in [proc, *proc.children(recursive=True)]:
        for thread in member.threads():
            os.setpriority(os.PRIO_PROCESS, thread.id, nice)
        done.append({"pid": member.pid, "name": member.name(), "threads": len(member.threads()), "nice": nice})
    return done


def replica_process(model_id: str) -> psutil.Process:
    """The replica actor process of ``model_id``'s deployment (its name ends with the id)."""
    from tests.integration.conftest import serve_replica_deployment

    for proc in psutil.process_iter(["cmdline"]):
        deployment = serve_replica_deployment(proc.info["cmdline"])
        if deployment is not None and deployment.endswith(model_id):
            return proc
    raise RuntimeError(f"no replica process of {model_id} found")


def renice_replica(model_id: str, nice: int) -> list[dict[str, Any]]:
    """``model_id``'s replica actor and its engine core and worker to ``nice``."""
    return renice_tree(replica_process(model_id), nice)


def idle_tree(proc: psutil.Process) -> list[dict[str, Any]]:
    """Every thread of ``proc`` and its descendants to SCHED_IDLE: unlike nice 19, which still takes
    a weighted share, such a thread runs only where no normal thread wants the core, and a normal
    thread that wakes preempts it at once."""
    from serve_app.replica.cpu_policy import apply_cpu_scheduling

    done = []
    for member in [proc, *proc.children(recursive=True)]:
        threads = apply_cpu_scheduling("idle", member.pid)
        done.append({"pid": member.pid, "name": member.name(), "threads": threads, "policy": "idle"})
    return done


@contextmanager
def hog(nice: int | str | None) -> Iterator[None]:
    """A busy loop at ``nice``, or under SCHED_IDLE for ``"idle"``, or none for None."""
    prefix = ["chrt", "--idle", "0"] if nice == "idle" else ["nice", "-n", str(nice)]
    proc = subprocess.Popen([*prefix, *HOG]) if nice is not None else None
    try:
        yield
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()


def run_split(url: str, capacity: float, seconds: float) -> dict[str, Any]:
    results: dict[str, Any] = {"b_alone": measured_phase(url, None, capacity, seconds)}
    results["a_flood_nice_0"] = measured_phase(url, noisy.KEYS["a"], capacity, seconds)
    results["a_reniced"] = renice_replica(A_MODEL, 19)
    results["a_flood_nice_19"] = measured_phase(url, noisy.KEYS["a"], capacity, seconds)
    results["a_sched_idle"] = idle_tree(replica_process(A_MODEL))
    results["a_flood_sched_idle"] = measured_phase(url, noisy.KEYS["a"], capacity, seconds)
    results["b_alone_again"] = measured_phase(url, None, capacity, seconds)
    return results


def run_hog(url: str, capacity: float, seconds: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    levels: list[tuple[str, int | str | None]] = [("b_alone", None), ("hog_nice_0", 0), ("hog_nice_19", 19)]
    for name, nice in [*levels, ("hog_sched_idle", "idle"), ("b_alone_again", None)]:
        with hog(nice):
            results[name] = measured_phase(url, None, capacity, seconds)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("split", "hog"))
    parser.add_argument("--phase-s", type=float, default=60.0)
    parser.add_argument("--a-tokens-per-minute", type=int, default=1000, help="the flooding tenant's quota")
    parser.add_argument("--batch-max-in-flight", type=int, default=1, help="the batch class's cap on slots")
    parser.add_argument(
        "--ray-worker-niceness", type=int, default=15, help="nice of Ray's worker processes (Ray's default: 15)"
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    flow = (args.a_tokens_per_minute, args.batch_max_in_flight)
    split = args.mode == "split"
    config = split_config(*flow) if split else noisy.app_config(*flow)
    if split:  # the noisy neighbour's request shapes, each tenant to its own model
        noisy.A_BODY = noisy.A_BODY | {"model": A_MODEL}
        noisy.B_BODY = noisy.B_BODY | {"model": B_MODEL}

    from serve_app.config import load_config
    from tests.integration.conftest import running_serve

    results: dict[str, Any] = {"command": module_command("benchmarks.flow_control_isolation"), "commit": commit(REPO)}
    results |= {"mode": args.mode, "door": "haproxy", "app_config": config, "a_body": noisy.A_BODY}
    results |= {"b_body": noisy.B_BODY, "ray_env": noisy.ray_env("haproxy", args.ray_worker_niceness)}
    with running_serve(results["ray_env"], address="local") as start:
        url = start(load_config(config)).base_url
        asyncio.run(noisy.closed_loop(url, 5))  # warm-up
        capacity = asyncio.run(noisy.closed_loop(url, args.phase_s / 2))
        results["capacity_requests_per_s"] = capacity
        run = run_split if split else run_hog
        results["phases"] = run(url, capacity, args.phase_s)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    for name, phase in results["phases"].items():
        if isinstance(phase, dict):
            b = phase["b"]
            print(name, b.get("sent"), b.get("ttft_p50_s"), b.get("ttft_p99_s"), phase["a"].get("statuses"))


if __name__ == "__main__":
    main()
