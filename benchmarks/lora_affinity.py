"""Adapter affinity against pow2 on the real stack (CPU): 2 replicas of the embedded SmolLM2, each
keeping at most 2 adapters (``max_cpu_loras: 2``), 4 adapters added at run time, requests spread
over them. Reports the affinity hit rate (the router's ``serve_app_adapter_routing`` outcomes),
adapter loads and evictions (the replicas' counters), and throughput and TTFT.

    python -m benchmarks.lora_affinity --requests 48 --concurrency 4 --out benchmarks/results/lora/affinity.json

Needs the embedded adapters (``serve-app make-adapters``); the 4 adapters are 2 names each for
the pirate and robot folders (vLLM keys its cache by name, so each name is loaded and evicted on
its own). Starts its own local Ray (never a cluster another job started) per policy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx

from serve_app.ports import free_port

MODEL = "smollm2-135m-instruct"
ADAPTERS = {"pirate-a": "pirate", "pirate-b": "pirate", "robot-a": "robot", "robot-b": "robot"}
PROMPTS = ("What is the capital of France?", "Who painted the Mona Lisa?", "Name a large river.")
_SERIES = re.compile(r"^ray_(serve_app_adapter_\w+)_total\{([^}]*)\} ([0-9.e+]+)$")


def app_config(affinity: bool) -> dict[str, Any]:
    lora = {"max_loras": 1, "max_lora_rank": 8, "max_cpu_loras": 2, "dynamic": True}
    model = {"id": MODEL, "source": f"embedded:{MODEL}", "dtype": "float32", "enforce_eager": True}
    model |= {"max_model_len": 512, "num_replicas": 2, "readiness_expect": "Paris", "lora": lora}
    model["ray_actor_options"] = {"num_cpus": 1, "env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}}
    return {"models": [model], "router": {"policy": "pow2", "adapter_affinity": affinity}}


def counters(metrics_url: str) -> dict[tuple[str, str], float]:
    """(metric, outcome or adapter) -> value summed over Ray's own labels."""
    totals: dict[tuple[str, str], float] = {}
    for line in httpx.get(metrics_url, timeout=30).text.splitlines():
        if found := _SERIES.match(line):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', found[2]))
            key = (found[1], labels.get("outcome") or labels.get("adapter", ""))
            totals[key] = totals.get(key, 0.0) + float(found[3])
    return totals


async def one(client: httpx.AsyncClient, url: str, adapter: str, prompt: str) -> tuple[float, float]:
    """(TTFT, latency) of one streamed greedy chat request."""
    body = {"model": adapter, "messages": [{"role": "user", "content": prompt}], "max_tokens": 24, "stream": True}
    started = time.monotonic()
    first = None
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body | {"temperature": 0}) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if first is None and line.startswith("data: {"):
                first = time.monotonic() - started
    return first or 0.0, time.monotonic() - started


async def drive(url: str, requests: int, concurrency: int) -> dict[str, float]:
    names = list(ADAPTERS)
    jobs = [(names[i % len(names)], PROMPTS[i % len(PROMPTS)]) for i in range(requests)]
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=300) as client:

        async def run(job: tuple[str, str]) -> tuple[float, float]:
            async with gate:
                return await one(client, url, *job)

        started = time.monotonic()
        results = await asyncio.gather(*(run(j) for j in jobs))
        wall = time.monotonic() - started
    ttfts = sorted(r[0] for r in results)
    return {"requests_per_s": requests / wall, "ttft_p50_s": ttfts[len(ttfts) // 2], "wall_s": wall}


def run_policy(affinity: bool, args: argparse.Namespace) -> dict[str, Any]:
    import ray
    from ray import serve

    from serve_app.app import build_app
    from serve_app.bench.readiness import wait_until_ok
    from serve_app.config import load_config
    from serve_app.models.embedded_adapters import prepare_adapter

    port, metrics_port = free_port(), free_port()
    metrics = {"_metrics_export_port": metrics_port, "_system_config": {"metrics_report_interval_ms": 1000}}
    ray.init(address="local", num_cpus=8, include_dashboard=False, **metrics)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(load_config(app_config(affinity))), name="serve-app", route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        wait_until_ok(f"{url}/ready", 600, period_s=2, request_timeout_s=60)
        for name, source in ADAPTERS.items():
            load = {"lora_name": name, "lora_path": str(prepare_adapter(source))}
            httpx.post(f"{url}/v1/load_lora_adapter", json=load, timeout=120).raise_for_status()
        asyncio.run(drive(url, len(ADAPTERS) * 2, 1))  # warm: every adapter placed once the stats say where
        time.sleep(3)
        before = counters(f"http://127.0.0.1:{metrics_port}/metrics")
        figures = asyncio.run(drive(url, args.requests, args.concurrency))
        time.sleep(4)  # the last counters reach the metrics agent
        after = counters(f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        serve.shutdown()
        ray.shutdown()
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    routed = {o: v for (m, o), v in delta.items() if m == "serve_app_adapter_routing"}
    figures["hit_rate"] = routed.get("hit", 0.0) / max(1.0, sum(routed.values()))
    figures["routing_outcomes"] = routed
    figures["loads"] = sum(v for (m, _), v in delta.items() if m == "serve_app_adapter_loads")
    figures["evictions"] = sum(v for (m, _), v in delta.items() if m == "serve_app_adapter_evictions")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/lora/affinity.json"))
    args = parser.parse_args()
    results = {"affinity": run_policy(True, args), "pow2": run_policy(False, args)}
    results["settings"] = {"requests": args.requests, "concurrency": args.concurrency, "config": app_config(True)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "settings"}, indent=2))


if __name__ == "__main__":
    main()
