"""TTFT at concurrency 1 per Ray Serve setting, with the real vLLM engine, beside plain vLLM.

GPU run 3 measured the stack's TTFT at concurrency 1 about 10 ms above plain vLLM with Ray Serve's
throughput-optimized mode on, where run 2 (mode off) had matched it. The mode changes several
settings at once (``ray/serve/_private/constants.py``); this script takes them apart: each mode
deploys the real engine (configs/local.yaml's model) with the router reached by direct ingress,
and measures TTFT alternately against it and against plain vLLM (``vllm.entrypoints.openai.
api_server``) serving the same checkpoint, so drift of the machine hits both alike.

    python benchmarks/ttft_modes.py --out benchmarks/results/ttft-modes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_table import MODEL_ID, VLLM_ENV, plain_vllm_command
from stack_overhead import deploy, direct_url

from serve_app.bench.readiness import wait_until_ok
from serve_app.config import AppConfig, app_args_from_serve_file, load_config
from serve_app.replica.engine_start import resolve_model_path

REPO = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
PLAIN_PORT = 8133
PROMPT = " ".join(f"The {i}th item of the list is a number." for i in range(20))
OFF, ON = "0", "1"
# label -> (server.ray_serve_throughput_optimized, Ray Serve variables set over the mode's)
MODES: dict[str, tuple[bool, dict[str, str]]] = {
    "mode off": (False, {}),
    "mode on": (True, {}),
    "mode on, handle calls as Ray actor calls (gRPC off)": (True, {"RAY_SERVE_USE_GRPC_BY_DEFAULT": OFF}),
    "mode on, user code on its own thread": (True, {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": ON}),
}


async def ttft_ms(client: httpx.AsyncClient, url: str, model: str) -> float:
    body = {"model": model, "prompt": PROMPT, "max_tokens": 4, "stream": True, "temperature": 0}
    started = time.perf_counter()
    first = float("nan")
    async with client.stream("POST", url + "/v1/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if first != first and line.startswith("data: {"):
                first = 1000 * (time.perf_counter() - started)
    return first


async def alternate(stack_url: str, plain_url: str, plain_model: str, n: int) -> tuple[list, list]:
    stack, plain = [], []
    async with httpx.AsyncClient(timeout=120) as client:
        for _ in range(3):  # warm both
            await ttft_ms(client, stack_url, MODEL)
            await ttft_ms(client, plain_url, plain_model)
        for _ in range(n):
            stack.append(await ttft_ms(client, stack_url, MODEL))
            plain.append(await ttft_ms(client, plain_url, plain_model))
    return stack, plain


def start_plain(config: AppConfig) -> tuple[subprocess.Popen, str]:
    """Plain vLLM on the stack's checkpoint; returns the process and the model name it serves."""
    model = config.models[0]
    path = resolve_model_path(model, config.model_cache_dir)
    cmd = plain_vllm_command(path, PLAIN_PORT, model.dtype, model.max_model_len or 2048)
    proc = subprocess.Popen(cmd, env=os.environ | VLLM_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_ok(f"http://127.0.0.1:{PLAIN_PORT}/health", 300)
    return proc, MODEL_ID


def measure(label: str, base: dict, plain_model: str, n: int, rnd: int) -> dict[str, Any]:
    from ray import serve

    optimized, extra = MODES[label]
    raw = json.loads(json.dumps(base)) | {
        "server": {"ray_serve_throughput_optimized": optimized, "ray_serve_direct_ingress": True}
    }
    name = f"ttft-{rnd}-{list(MODES).index(label)}"
    deploy(load_config(raw), name, extra_env=extra)
    url = direct_url(timeout_s=300)
    wait_until_ok(url + "/ready", 300)
    stack, plain = asyncio.run(alternate(url, f"http://127.0.0.1:{PLAIN_PORT}", plain_model, n))
    serve.delete(name)
    time.sleep(3)  # the router replica's port is free again before the next mode binds
    return {
        "mode": label,
        "round": rnd,
        "stack_ms": stack,
        "plain_ms": plain,
        "stack_p50_ms": statistics.median(stack),
        "plain_p50_ms": statistics.median(plain),
        "p50_diff_ms": statistics.median(stack) - statistics.median(plain),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| Ray Serve setting | round | stack TTFT p50 (ms) | plain vLLM TTFT p50 (ms) | stack - plain (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['round']} | {r['stack_p50_ms']:.1f} | {r['plain_p50_ms']:.1f}"
            f" | {r['p50_diff_ms']:+.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=30, help="per mode and round, for each server")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import ray
    from ray import serve

    base = app_args_from_serve_file(REPO / "configs" / "local.yaml")
    plain, plain_model = start_plain(load_config(base))
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": 8134})
    rows: list[dict] = []
    try:
        for rnd in range(args.rounds):
            order = list(MODES) if rnd % 2 == 0 else list(reversed(MODES))
            for label in order:
                rows.append(measure(label, base, plain_model, args.requests, rnd))
                print(table(rows[-1:]), flush=True)
                save(args, rows)
    finally:
        serve.shutdown()
        ray.shutdown()
        plain.terminate()
    print(table(rows))


def save(args: argparse.Namespace, rows: list[dict]) -> None:
    """Written after every mode: a run cut short keeps what it measured."""
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"args": vars(args) | {"out": str(args.out)}, "rows": rows}
    (args.out / "results.json").write_text(json.dumps(payload, indent=1))
    (args.out / "summary.md").write_text(table(rows))


if __name__ == "__main__":
    main()
