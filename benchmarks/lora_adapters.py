"""Throughput and TTFT with 1, 4 and 16 LoRA adapters against the base alone, on the real stack (one
replica of the embedded SmolLM2), on CPU or on one GPU.

    python -m benchmarks.lora_adapters --requests 32 --concurrency 4 --out benchmarks/results/lora/adapters.json
    python -m benchmarks.lora_adapters --device gpu --requests 256 --concurrency 32 --max-tokens 64 \
        --adapters-dir .gpu-data/adapters --cache-dir /tmp/mc --out $OUT/adapters-gpu.json   # ~5 min

Two deployments: the base with LoRA off (the reference), then LoRA on (``max_loras: 4``,
``max_cpu_loras: 16``) with 16 adapters added at run time (names over the two embedded adapters'
folders), driven with streamed greedy requests for the base, then spread over 1, 4 and 16 adapters;
requests/s, output tokens/s (the engine's usage counts) and TTFT p50/p99/max per phase. On a GPU the
replica takes the GPU (0.3 of its memory, eager) and the model is converted in a process of its own
first. Needs ``serve-app make-adapters`` or ``--adapters-dir`` (``pirate/``, ``robot/``). Starts its
own local Ray (never a cluster another job started).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.lora_affinity import MODEL, PROMPTS
from serve_app.ports import free_port

ADAPTER_COUNTS = (1, 4, 16)


def app_config(lora: bool, args: argparse.Namespace) -> dict[str, Any]:
    model: dict[str, Any] = {"id": MODEL, "source": f"embedded:{MODEL}", "enforce_eager": True, "max_model_len": 512}
    model["readiness_expect"] = "Paris"
    if args.device == "gpu":
        model |= {"dtype": "bfloat16", "engine_options": {"gpu_memory_utilization": 0.3}}
        model["ray_actor_options"] = {"num_cpus": 1, "num_gpus": 1}
    else:
        model["dtype"] = "float32"
        model["ray_actor_options"] = {"num_cpus": 1, "env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}}
    if lora:
        model["lora"] = {"max_loras": args.max_loras, "max_lora_rank": 8, "max_cpu_loras": 16, "dynamic": True}
    config: dict[str, Any] = {"models": [model], "router": {"policy": "pow2"}}
    return config | ({"model_cache_dir": str(args.cache_dir)} if args.cache_dir else {})


async def one(client: httpx.AsyncClient, url: str, name: str, prompt: str, max_tokens: int) -> tuple[float, int]:
    """(TTFT, output tokens) of one streamed greedy chat request; tokens from the final usage chunk."""
    body = {"model": name, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
    body |= {"temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    started = time.monotonic()
    first, tokens = None, 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[len("data: ") :])
            if first is None and chunk.get("choices"):
                first = time.monotonic() - started
            tokens = (chunk.get("usage") or {}).get("completion_tokens", tokens)
    return first or 0.0, tokens


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def drive(url: str, names: list[str], requests: int, args: argparse.Namespace) -> dict[str, float]:
    gate = asyncio.Semaphore(args.concurrency)
    async with httpx.AsyncClient(timeout=300) as client:

        async def run(i: int) -> tuple[float, int]:
            async with gate:
                return await one(client, url, names[i % len(names)], PROMPTS[i % len(PROMPTS)], args.max_tokens)

        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(*(run(i) for i in range(requests)))
        wall = loop.time() - started
    ttfts = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    return {
        "requests_per_s": round(requests / wall, 2),
        "output_tokens_per_s": round(tokens / wall, 1),
        "output_tokens": tokens,
        "ttft_p50_s": round(percentile(ttfts, 0.5), 4),
        "ttft_p99_s": round(percentile(ttfts, 0.99), 4),
        "ttft_max_s": round(ttfts[-1], 4),
        "wall_s": round(wall, 2),
    }


def load_adapters(url: str, names: list[str], adapters_dir: Path | None) -> None:
    from serve_app.models.embedded_adapters import prepare_adapter

    for i, name in enumerate(names):
        kind = ("pirate", "robot")[i % 2]
        path = adapters_dir / kind if adapters_dir else prepare_adapter(kind)
        body = {"lora_name": name, "lora_path": str(path.resolve())}
        httpx.post(f"{url}/v1/load_lora_adapter", json=body, timeout=120).raise_for_status()


def measure(lora: bool, args: argparse.Namespace) -> dict[str, Any]:
    import ray
    from ray import serve

    from serve_app.app import build_app
    from serve_app.bench.readiness import wait_until_ok
    from serve_app.config import load_config

    port = free_port()
    ray.init(address="local", num_cpus=8, num_gpus=1 if args.device == "gpu" else 0, include_dashboard=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        started = time.monotonic()
        serve.run(build_app(load_config(app_config(lora, args))), name="serve-app", route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        wait_until_ok(f"{url}/ready", args.ready_timeout_s, period_s=2, request_timeout_s=60)
        print(f"LoRA {'on' if lora else 'off'}: ready after {time.monotonic() - started:.0f} s", flush=True)
        if not lora:
            return {"base, LoRA off": asyncio.run(drive(url, [MODEL], args.requests, args))}
        names = [f"adapter-{i}" for i in range(max(ADAPTER_COUNTS))]
        load_adapters(url, names, args.adapters_dir)
        asyncio.run(drive(url, names, len(names), args))  # every adapter loaded once before measuring
        figures = {"base, LoRA on": asyncio.run(drive(url, [MODEL], args.requests, args))}
        for count in ADAPTER_COUNTS:
            figures[f"{count} adapters"] = asyncio.run(drive(url, names[:count], args.requests, args))
            print(count, figures[f"{count} adapters"], flush=True)
        return figures
    finally:
        serve.shutdown()
        ray.shutdown()


def prepare_model(cache_dir: Path | None) -> None:
    """The embedded SmolLM2 converted in a process of its own before any engine starts (transformers
    and a vLLM engine in one process hung on a GPU machine: /work/shared/gpu/README.md's notes)."""
    cache = ["--cache-dir", str(cache_dir)] if cache_dir else []
    subprocess.run([sys.executable, "-m", "serve_app.cli", "prepare-model", "--quiet", *cache], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--max-loras", type=int, default=4, help="adapters in one engine batch")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--adapters-dir", type=Path, help="holds pirate/ and robot/ (default: make-adapters' cache)")
    parser.add_argument("--cache-dir", type=Path, help="the embedded model's cache (the app's model_cache_dir)")
    parser.add_argument("--ready-timeout-s", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/lora/adapters.json"))
    args = parser.parse_args()
    prepare_model(args.cache_dir)
    results = measure(False, args) | measure(True, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {"requests": args.requests, "concurrency": args.concurrency, "max_tokens": args.max_tokens}
    report = {"device": args.device, "results": results, "settings": settings, "config": app_config(True, args)}
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
