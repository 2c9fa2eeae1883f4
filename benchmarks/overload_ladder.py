"""Overload ladder on CPU: the stack with flow control against plain vLLM at the same offered loads.

    python -m benchmarks.overload_ladder --step-s 15 --max-in-flight 16 \
        --out benchmarks/results/flow-control/overload-ladder-engine-capacity.json

Capacity C is ``--capacity``, or else measured on plain vLLM first (``--capacity-on plain``, the
default) or on the stack: completed requests per second of a closed loop at ``--max-in-flight``
concurrency (on a shared machine one stall can spoil it). Then each server gets open-loop arrivals
(evenly spaced) at 0.5, 1, 2, 3 and 5 x C for ``--step-s`` seconds each: plain vLLM's own OpenAI
server (same engine settings), which queues everything, and the stack (one router, one vLLM
replica; flow control with ``--max-in-flight``, ``--max-waiting``, a queue deadline of the SLO).
Per load: goodput (answers within the SLO per second), the rejected count (429/503) and the
rejection latency, timeouts (no answer within the client's timeout) and lost requests (neither an
answer nor a refusal nor a timeout).

The stack is reached through ``--door``: ``haproxy`` (the default), the door ``make serve`` ships,
or ``ray-proxy``, Ray Serve's Python proxy (see benchmarks/flow_control.py). Ray's worker processes
run at ``--ray-worker-niceness`` (default 0, as ``make serve`` ships them; plain vLLM runs at 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from benchmarks.flow_control import DOORS, REPO, SHIPPED_WORKER_NICENESS, quantile, ray_env
from benchmarks.seed_table import MODEL_ID, VLLM_ENV, fp32_model, plain_vllm_command, stop, wait_ready
from serve_app.bench.provenance import commit, module_command
from serve_app.ports import free_port

BODY = {"model": MODEL_ID, "prompt": "Write a short story about a lighthouse keeper.", "max_tokens": 32}
MULTIPLES = (0.5, 1.0, 2.0, 3.0, 5.0)
SLO_S = 4.0  # end-to-end latency of a good answer
CLIENT_TIMEOUT_S = 30.0


def stack_config(max_in_flight: int, max_waiting: int) -> dict[str, Any]:
    model = {"id": MODEL_ID, "source": f"embedded:{MODEL_ID}", "dtype": "float32", "enforce_eager": True}
    model |= {"max_model_len": 2048, "readiness_expect": "Paris"}
    model["ray_actor_options"] = {"num_cpus": 1, "env_vars": VLLM_ENV}
    flow = {"max_in_flight": max_in_flight, "max_waiting": max_waiting, "interactive": {"max_wait_s": SLO_S}}
    return {"models": [model], "flow_control": flow}


async def one(client: httpx.AsyncClient) -> dict[str, Any]:
    started = time.monotonic()
    try:
        resp = await client.post("/v1/completions", json=BODY, timeout=CLIENT_TIMEOUT_S)
        return {"status": resp.status_code, "latency_s": time.monotonic() - started}
    except httpx.TimeoutException:
        return {"status": "timeout", "latency_s": time.monotonic() - started}
    except httpx.HTTPError as err:
        return {"status": type(err).__name__, "latency_s": time.monotonic() - started}


async def offered(url: str, rate: float, seconds: float) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=url, limits=limits) as client:
        tasks = []
        started = time.monotonic()
        for i in range(max(1, int(rate * seconds))):
            await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(client)))
        records = await asyncio.gather(*tasks)
    return summarize(records, seconds)


def summarize(records: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    good = [r for r in records if r["status"] == 200 and r["latency_s"] <= SLO_S]
    rejected = sorted(r["latency_s"] for r in records if r["status"] in (429, 503))
    ok = sorted(r["latency_s"] for r in records if r["status"] == 200)
    out: dict[str, Any] = {"sent": len(records), "ok": len(ok), "good": len(good), "goodput_per_s": len(good) / seconds}
    out |= {"rejected": len(rejected), "timeouts": sum(1 for r in records if r["status"] == "timeout")}
    out["lost"] = len(records) - len(ok) - len(rejected) - out["timeouts"]
    out["other"] = sorted({str(r["status"]) for r in records} - {"200", "429", "503", "timeout"})
    if ok:
        out |= {"latency_p50_s": quantile(ok, 0.5), "latency_p99_s": quantile(ok, 0.99)}
    if rejected:
        out |= {"rejection_p50_s": quantile(rejected, 0.5), "rejection_p99_s": quantile(rejected, 0.99)}
        fast = [x for x in rejected if x < SLO_S / 2]  # refused at arrival, not dropped at the deadline
        out["rejected_at_arrival"] = len(fast)
        if fast:
            out["rejection_at_arrival_p99_s"] = quantile(fast, 0.99)
    return out


async def capacity(url: str, seconds: float, concurrency: int) -> float:
    done = 0
    stop_at = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < stop_at:
                # Awaited before the add: `done += await ...` would read `done` before the await
                # and lose the other workers' updates.
                ok = (await one(client))["status"] == 200
                done += ok

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.monotonic() - started)


def ladder(url: str, rate: float, step_s: float) -> dict[str, Any]:
    out = {}
    for multiple in MULTIPLES:
        out[str(multiple)] = asyncio.run(offered(url, multiple * rate, step_s)) | {"offered_per_s": multiple * rate}
        time.sleep(3)  # the previous load's stragglers end
    return out


@dataclass(frozen=True)
class Settings:
    step_s: float
    max_in_flight: int
    max_waiting: int
    capacity: float | None  # requests/s called 1x; None: measured
    capacity_on: str  # "plain" or "stack": where it is measured
    door: str  # a key of DOORS: how clients reach the stack
    worker_niceness: int  # nice of Ray's worker processes (make serve ships 0; Ray's default is 15)


def warm_measure_ladder(url: str, settings: Settings) -> tuple[float, dict[str, Any]]:
    """A warm-up, the capacity (unless given), then the ladder at it, on one server."""
    asyncio.run(capacity(url, 5, settings.max_in_flight))
    rate = settings.capacity or asyncio.run(capacity(url, settings.step_s, settings.max_in_flight))
    return rate, ladder(url, rate, settings.step_s)


def run_stack(settings: Settings) -> tuple[float | None, dict[str, Any]]:
    """The stack's ladder at ``settings.capacity`` (measured here first when it is None)."""
    from serve_app.config import load_config
    from tests.integration.conftest import running_serve

    with running_serve(ray_env(settings.door, settings.worker_niceness), address="local") as start:
        app = start(load_config(stack_config(settings.max_in_flight, settings.max_waiting)))
        return warm_measure_ladder(app.base_url, settings)


def run_vllm(settings: Settings) -> tuple[float | None, dict[str, Any]]:
    """Plain vLLM's ladder at ``settings.capacity`` (measured here first when it is None)."""
    port = free_port()
    env = os.environ | VLLM_ENV
    proc = subprocess.Popen(plain_vllm_command(fp32_model(), port), env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(proc, f"{url}/v1/models", 600)
        return warm_measure_ladder(url, settings)
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step-s", type=float, default=15.0)
    parser.add_argument("--capacity", type=float, default=None, help="requests/s to call 1x (default: measure it)")
    parser.add_argument("--capacity-on", choices=["plain", "stack"], default="plain")
    parser.add_argument("--max-in-flight", type=int, default=16, help="the stack's flow_control.max_in_flight")
    parser.add_argument("--max-waiting", type=int, default=None, help="flow_control.max_waiting (default: the cap)")
    parser.add_argument("--door", choices=sorted(DOORS), default="haproxy", help="how clients reach the stack")
    parser.add_argument(
        "--ray-worker-niceness",
        type=int,
        default=SHIPPED_WORKER_NICENESS,
        help="nice of Ray's worker processes (default: as `make serve` ships; runs before this option had Ray's 15)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/flow-control/overload-ladder.json"))
    args = parser.parse_args()
    # Read before the run: the tree may change while it runs.
    results: dict[str, Any] = {"command": module_command("benchmarks.overload_ladder"), "commit": commit(REPO)}
    cap = args.max_in_flight
    where = (args.capacity, args.capacity_on, args.door, args.ray_worker_niceness)
    settings = Settings(args.step_s, cap, args.max_waiting or cap, *where)
    first, second = (run_vllm, run_stack) if settings.capacity_on == "plain" else (run_stack, run_vllm)
    rate, first_ladder = first(settings)
    _, second_ladder = second(replace(settings, capacity=rate))
    ladders = {first.__name__: first_ladder, second.__name__: second_ladder}
    results |= {"door": args.door, "ray_env": ray_env(args.door, args.ray_worker_niceness)}
    results["capacity_requests_per_s"] = rate
    results |= {"stack": ladders["run_stack"], "plain_vllm": ladders["run_vllm"]}
    results["settings"] = {"step_s": args.step_s, "slo_s": SLO_S, "client_timeout_s": CLIENT_TIMEOUT_S}
    results["settings"] |= {"capacity_given": args.capacity is not None, "capacity_on": settings.capacity_on}
    results["settings"] |= {"body": BODY, "stack_config": stack_config(cap, settings.max_waiting)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "settings"}, indent=2))


if __name__ == "__main__":
    main()
