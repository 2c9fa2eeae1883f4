"""Noisy neighbour on the real stack (CPU): tenant A floods at 5x capacity while tenant B sends
steady streamed interactive traffic; B's TTFT against B alone, with priority classes (A batch)
and without (A interactive), A's 429s and 503s, and the ledger (every request answered: lost 0).

    python -m benchmarks.flow_control --phase-s 30 --out benchmarks/results/flow-control/noisy-neighbour.json

One app, one router, one vLLM replica of the embedded SmolLM2 (its own local Ray). Capacity is
measured first: completed requests per second of a closed loop at ``max_in_flight`` concurrency
(A's request shape). A's tenants have a token quota (``--a-tokens-per-minute``), so the flood
meets it; "a" is batch, "a-interactive" the same limits in B's class. B sends at 0.25x capacity.

The stack is reached through ``--door``: ``haproxy`` (the default), the door ``make serve`` ships
(Ray Serve's HAProxy, forwarding to the router replica's direct-ingress port), or ``ray-proxy``,
Ray Serve's Python proxy. Both start through the integration tests' ``running_serve``.

Ray starts with its worker processes at ``--ray-worker-niceness`` (default 0, as ``make serve``
ships them; runs before this option had Ray's default, 15, under a client and Ray daemons at 0).

``--batch-pool`` serves the model twice: the interactive class on one core, and the batch class
(``flow_control.batch.model_pools``) on a replica of its own on the other core, under
``cpu_scheduling: idle``. Without classes, A is interactive and shares B's replica.

``--engine-scheduling-policy priority`` runs vLLM's priority scheduler (``engine_options``), and
the router then sets each request's ``priority`` from its class (serve_app.core.engine_priority).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from serve_app.bench.provenance import commit, module_command

MODEL = "smollm2-135m-instruct"
BATCH_POOL = MODEL + "-batch"  # --batch-pool: the batch class's own replica of the model
KEYS = {name: f"sk-bench-{name}-0123456789" for name in ("a", "a-interactive", "b", "probe")}
A_BODY = {"model": MODEL, "prompt": "Write a short story about a lighthouse keeper.", "max_tokens": 32}
B_BODY = {"model": MODEL, "messages": [{"role": "user", "content": "What is the capital of France?"}]}
B_BODY |= {"max_tokens": 16, "stream": True, "temperature": 0}
MAX_IN_FLIGHT = 4
REPO = Path(__file__).resolve().parents[1]
# ``running_serve``'s door_env per --door: None is the shipped door (HAProxy), {} Ray's own proxy.
DOORS: dict[str, dict[str, str] | None] = {"haproxy": None, "ray-proxy": {}}
# What `make serve` starts Ray with: its workers (replicas, engines, HAProxy) at nice 0, not Ray's 15.
SHIPPED_WORKER_NICENESS = 0


def ray_env(door: str, worker_niceness: int) -> dict[str, str]:
    """The environment Ray starts in: the door's, and the niceness of Ray's worker processes."""
    from tests.integration.conftest import SHIPPED_DOOR_ENV

    door_env = DOORS[door]
    return (SHIPPED_DOOR_ENV if door_env is None else door_env) | {"RAY_worker_niceness": str(worker_niceness)}


def tenant(name: str, priority: str, tokens_per_minute: int | None = None) -> dict[str, Any]:
    digest = hashlib.sha256(KEYS[name].encode()).hexdigest()
    out: dict[str, Any] = {"name": name, "api_key_sha256": [digest], "priority": priority}
    return out | ({"tokens_per_minute": tokens_per_minute} if tokens_per_minute else {})


def app_config(
    a_tokens_per_minute: int | None,
    batch_max_in_flight: int = MAX_IN_FLIGHT // 2,
    batch_yield: int | None = None,
    scheduling_policy: str = "fcfs",
    batch_pool: bool = False,
) -> dict[str, Any]:
    model = {"id": MODEL, "source": f"embedded:{MODEL}", "dtype": "float32", "enforce_eager": True}
    model |= {"max_model_len": 512, "readiness_expect": "Paris"}
    if scheduling_policy != "fcfs":  # vLLM's default left implicit, as in the runs before this flag
        # the engine orders its waiting requests by the router's priority (interactive before batch)
        model["engine_options"] = {"scheduling_policy": scheduling_policy}
    model["ray_actor_options"] = {"num_cpus": 1, "env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}}
    tenants = [
        tenant("a", "batch", a_tokens_per_minute),
        tenant("a-interactive", "interactive", a_tokens_per_minute),
        tenant("b", "interactive"),
        tenant("probe", "interactive"),
    ]
    flow = {"tenants": tenants, "max_in_flight": MAX_IN_FLIGHT, "max_waiting": 64}
    # batch may hold at most this many slots (half by default): the rest stay free for interactive arrivals
    batch: dict[str, Any] = {"max_wait_s": 10, "max_in_flight": batch_max_in_flight}
    if batch_yield is not None:  # batch's cap while interactive requests wait or are in flight
        batch["max_in_flight_when_higher_active"] = batch_yield
    flow |= {"interactive": {"max_wait_s": 10}, "batch": batch}
    if not batch_pool:
        return {"models": [model], "flow_control": flow}
    batch["model_pools"] = {MODEL: BATCH_POOL}
    return {"models": pooled_models(model), "flow_control": flow}


def bound_model(model: dict[str, Any], model_id: str, core: str) -> dict[str, Any]:
    """``model`` as ``model_id`` with its engine's OpenMP worker bound to ``core`` (vLLM's automatic
    binding puts every engine's worker on core 0 here)."""
    env = model["ray_actor_options"]["env_vars"] | {"VLLM_CPU_OMP_THREADS_BIND": core}
    return model | {"id": model_id, "ray_actor_options": {"num_cpus": 1, "env_vars": env}}


def pooled_models(model: dict[str, Any]) -> list[dict[str, Any]]:
    """The model twice: B's class on core 0, and a batch pool on core 1 under SCHED_IDLE."""
    return [bound_model(model, MODEL, "0"), bound_model(model, BATCH_POOL, "1") | {"cpu_scheduling": "idle"}]


async def send(client: httpx.AsyncClient, key: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """One request: status, TTFT (first SSE event, streamed), latency and, for a refusal, its error
    code; never raises."""
    started = time.monotonic()
    first: float | None = None
    error_body = b""
    try:
        headers = {"Authorization": f"Bearer {key}"}
        async with client.stream("POST", path, json=body, headers=headers) as resp:
            async for chunk in resp.aiter_bytes():
                if first is None and b"data: {" in chunk:
                    first = time.monotonic() - started
                if resp.status_code != 200:
                    error_body += chunk
            status = resp.status_code
    except httpx.HTTPError as err:
        return {"status": "error", "error": type(err).__name__, "latency_s": time.monotonic() - started}
    out = {"status": status, "ttft_s": first, "latency_s": time.monotonic() - started, "sent_at": started}
    return out | ({"code": error_code(error_body)} if status != 200 else {})


def error_code(body: bytes) -> str:
    """The OpenAI error body's ``code`` (the router's reason: quota, late, deadline, ...)."""
    try:
        return str(json.loads(body)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "unreadable"


async def closed_loop(url: str, seconds: float) -> float:
    """Completed requests per second of A's shape at MAX_IN_FLIGHT concurrency (the capacity)."""
    done = 0
    stop = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < stop:
                if (await send(client, KEYS["probe"], "/v1/completions", A_BODY))["status"] == 200:
                    done += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(MAX_IN_FLIGHT)))
        return done / (time.monotonic() - started)


async def open_loop(client: httpx.AsyncClient, key: str, path: str, body: dict, rate: float, seconds: float) -> list:
    tasks = []
    started = time.monotonic()
    for i in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
        tasks.append(asyncio.create_task(send(client, key, path, body)))
    return list(await asyncio.gather(*tasks))


async def phase(url: str, flood_key: str | None, capacity: float, seconds: float) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        b_rate = 0.25 * capacity
        b = open_loop(client, KEYS["b"], "/v1/chat/completions", B_BODY, b_rate, seconds)
        a = open_loop(client, flood_key, "/v1/completions", A_BODY, 5 * capacity, seconds) if flood_key else None
        b_records, a_records = await asyncio.gather(b, a) if a else (await b, [])
    return {"b": summarize(b_records), "a": summarize(a_records), "b_rate": b_rate, "a_rate": 5 * capacity}


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    if not records:
        return {}
    statuses = Counter(str(r["status"]) for r in records)
    ttfts = sorted(r["ttft_s"] for r in records if r["status"] == 200 and r.get("ttft_s") is not None)
    refusals = sorted(r["latency_s"] for r in records if r["status"] in (429, 503))
    out: dict[str, Any] = {"sent": len(records), "statuses": dict(statuses)}
    out["lost"] = len(records) - sum(v for k, v in statuses.items() if k in ("200", "429", "503"))
    if ttfts:
        out |= {"ttft_p50_s": quantile(ttfts, 0.5), "ttft_p99_s": quantile(ttfts, 0.99)}
        out["ttft_samples_s"] = [round(t, 4) for t in ttfts]  # to pool rounds: one phase's p99 is near its maximum
    if refusals:
        out |= {"refusal_latency_p50_s": quantile(refusals, 0.5), "refusal_latency_p99_s": quantile(refusals, 0.99)}
        out["refusal_codes"] = dict(Counter(r.get("code", "unknown") for r in records if r["status"] in (429, 503)))
        out["slow_refusals"] = slow_refusals(records)
    return out


def slow_refusals(records: list[dict[str, Any]], over_s: float = 1.0) -> list[list[Any]]:
    """Refusals that took longer than ``over_s``: [seconds into the phase it was sent, latency, code]
    (where in a phase requests waited out their queue deadline)."""
    start = min(r["sent_at"] for r in records if "sent_at" in r)
    slow = [r for r in records if r["status"] in (429, 503) and r["latency_s"] > over_s]
    return [[round(r["sent_at"] - start, 2), round(r["latency_s"], 2), r.get("code")] for r in slow]


def quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, max(0, int(q * len(values) + 0.999999) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase-s", type=float, default=30.0)
    parser.add_argument("--a-tokens-per-minute", type=int, default=3000, help="the flooding tenant's quota")
    parser.add_argument(
        "--batch-max-in-flight", type=int, default=MAX_IN_FLIGHT // 2, help="the batch class's cap on slots"
    )
    parser.add_argument(
        "--batch-max-in-flight-when-higher-active",
        type=int,
        default=None,
        help="the batch class's cap while interactive requests wait or are in flight (0: yield); default none",
    )
    parser.add_argument(
        "--engine-scheduling-policy",
        choices=("fcfs", "priority"),
        default="fcfs",
        help="vLLM's scheduling_policy; priority: the router sets each request's priority from its class",
    )
    parser.add_argument(
        "--batch-pool",
        action="store_true",
        help="serve the batch class on a pool of its own (flow_control.batch.model_pools), on the other core, "
        "under cpu_scheduling idle",
    )
    parser.add_argument("--door", choices=sorted(DOORS), default="haproxy", help="how clients reach the stack")
    parser.add_argument(
        "--ray-worker-niceness",
        type=int,
        default=SHIPPED_WORKER_NICENESS,
        help="nice of Ray's worker processes (default: as `make serve` ships; Ray's own default is 15)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/flow-control/noisy-neighbour.json"))
    args = parser.parse_args()
    flow_args = (args.a_tokens_per_minute, args.batch_max_in_flight, args.batch_max_in_flight_when_higher_active)
    flow_args += (args.engine_scheduling_policy, args.batch_pool)

    from serve_app.config import load_config
    from tests.integration.conftest import running_serve

    # Read before the run: the tree may change while it runs.
    results: dict[str, Any] = {"command": module_command("benchmarks.flow_control"), "commit": commit(REPO)}
    results["door"] = args.door
    results["ray_env"] = ray_env(args.door, args.ray_worker_niceness)
    with running_serve(results["ray_env"], address="local") as start:
        url = start(load_config(app_config(*flow_args))).base_url
        asyncio.run(closed_loop(url, 5))  # warm-up
        capacity = asyncio.run(closed_loop(url, args.phase_s / 2))
        results["capacity_requests_per_s"] = capacity
        results["b_alone"] = asyncio.run(phase(url, None, capacity, args.phase_s))
        results["with_classes"] = asyncio.run(phase(url, KEYS["a"], capacity, args.phase_s))
        results["without_classes"] = asyncio.run(phase(url, KEYS["a-interactive"], capacity, args.phase_s))
    results["settings"] = {"phase_s": args.phase_s, "max_in_flight": MAX_IN_FLIGHT, "a_body": A_BODY, "b_body": B_BODY}
    results["settings"] |= {
        "a_tokens_per_minute": args.a_tokens_per_minute,
        "app_config": app_config(*flow_args),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "settings"}, indent=2))


if __name__ == "__main__":
    main()
