"""Throughput and TTFT with 1, 4 and 16 LoRA adapters against the base alone, on the real stack (CPU,
one replica of the embedded SmolLM2).

    python -m benchmarks.lora_adapters --requests 32 --concurrency 4 --out benchmarks/results/lora/adapters.json

Two deployments: the base with LoRA off (the reference), then LoRA on (``max_loras: 4``,
``max_cpu_loras: 16``) with 16 adapters added at run time (names over the two embedded adapters'
folders), driven with requests for the base, then spread over 1, 4 and 16 adapters. Needs
``serve-app make-adapters``. Starts its own local Ray (never a cluster another job started).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from benchmarks.lora_affinity import MODEL, PROMPTS, one
from serve_app.ports import free_port

ADAPTER_COUNTS = (1, 4, 16)


def app_config(lora: bool) -> dict[str, Any]:
    model = {"id": MODEL, "source": f"embedded:{MODEL}", "dtype": "float32", "enforce_eager": True}
    model |= {"max_model_len": 512, "readiness_expect": "Paris"}
    model["ray_actor_options"] = {"num_cpus": 1, "env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}}
    if lora:
        model["lora"] = {"max_loras": 4, "max_lora_rank": 8, "max_cpu_loras": 16, "dynamic": True}
    return {"models": [model], "router": {"policy": "pow2"}}


async def drive(url: str, names: list[str], requests: int, concurrency: int) -> dict[str, float]:
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=300) as client:

        async def run(i: int) -> tuple[float, float]:
            async with gate:
                return await one(client, url, names[i % len(names)], PROMPTS[i % len(PROMPTS)])

        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(*(run(i) for i in range(requests)))
        wall = loop.time() - started
    ttfts = sorted(r[0] for r in results)
    return {"requests_per_s": requests / wall, "ttft_p50_s": ttfts[len(ttfts) // 2], "ttft_max_s": ttfts[-1]}


def measure(lora: bool, args: argparse.Namespace) -> dict[str, Any]:
    import ray
    from ray import serve

    from serve_app.app import build_app
    from serve_app.bench.readiness import wait_until_ok
    from serve_app.config import load_config
    from serve_app.models.embedded_adapters import prepare_adapter

    port = free_port()
    ray.init(address="local", num_cpus=8, include_dashboard=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(load_config(app_config(lora))), name="serve-app", route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        wait_until_ok(f"{url}/ready", 600, period_s=2, request_timeout_s=60)
        if not lora:
            return {"base, LoRA off": asyncio.run(drive(url, [MODEL], args.requests, args.concurrency))}
        names = [f"adapter-{i}" for i in range(max(ADAPTER_COUNTS))]
        for i, name in enumerate(names):
            path = prepare_adapter(("pirate", "robot")[i % 2])
            httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)}, timeout=120)
        asyncio.run(drive(url, names, len(names), 1))  # every adapter loaded once before measuring
        figures = {"base, LoRA on": asyncio.run(drive(url, [MODEL], args.requests, args.concurrency))}
        for count in ADAPTER_COUNTS:
            figures[f"{count} adapters"] = asyncio.run(drive(url, names[:count], args.requests, args.concurrency))
        return figures
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/lora/adapters.json"))
    args = parser.parse_args()
    results = measure(False, args) | measure(True, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {"requests": args.requests, "concurrency": args.concurrency, "max_tokens": 24}
    args.out.write_text(json.dumps({"results": results, "settings": settings, "config": app_config(True)}, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
