"""Router batching sweep on the real stack (CPU, embedded models), one run, one Ray cluster.

Generation: SmolLM2 at 32 concurrent clients x 200 new tokens (the seed's load) for every
``batch_timeout_ms`` in {0, 5, 20} x ``max_batch_size`` in {1, 8, 32}, measured by
``serve-app bench``. Embeddings: all-MiniLM-L6-v2 at 64 concurrent clients, one input each,
with and without router batching.

    python benchmarks/router_batching.py --out benchmarks/results/router-batching

Each configuration is a fresh deployment (batching settings are part of the model config);
configurations run back to back, so machine noise spreads over all of them.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from serve_app.bench.stats import percentile  # noqa: E402
from serve_app.config import app_args_from_serve_file, load_config  # noqa: E402
from tests.integration.conftest import free_port, wait_ready  # noqa: E402

TIMEOUTS_MS = (0, 5, 20)
BATCH_SIZES = (1, 8, 32)


def generation_config(size: int, timeout_ms: int) -> Any:
    args = app_args_from_serve_file(REPO / "configs" / "local.yaml")
    args["models"][0] |= {"max_model_len": 1024, "batching": {"max_batch_size": size, "batch_timeout_ms": timeout_ms}}
    return load_config(args)


def embedding_config(size: int, timeout_ms: int) -> Any:
    args = app_args_from_serve_file(REPO / "configs" / "embeddings.yaml")
    model = args["models"][0]
    model.pop("autoscaling", None)
    model |= {"num_replicas": 1, "batching": {"max_batch_size": size, "batch_timeout_ms": timeout_ms}}
    return load_config(args)


def deploy(config: Any, base_url: str) -> float:
    from ray import serve

    from serve_app.app import build_app

    if "serve-app" in serve.status().applications:
        serve.delete("serve-app")
    started = time.monotonic()
    serve.run(build_app(config), name="serve-app", route_prefix="/", blocking=False)
    wait_ready(base_url)
    return time.monotonic() - started


def bench_generation(base_url: str, out: Path) -> dict[str, Any]:
    cmd = [str(Path(sys.executable).parent / "serve-app"), "bench", "--url", base_url, "--model"]
    cmd += ["smollm2-135m-instruct", "--endpoint", "completions", "--concurrency", "32", "--num-requests", "64"]
    cmd += ["--prompts", "chat", "--max-tokens", "200", "--ignore-eos", "--no-progress", "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=900)
    s = json.loads((out / "results.json").read_text())["levels"][0]["summary"]
    return {
        "completed": s["completed"],
        "failed": s["failed"],
        "output_tok_per_s": s["output_throughput"],
        "p50_e2e_ms": s["e2el"]["p50_ms"],
        "p95_e2e_ms": s["e2el"]["p95_ms"],
        "p50_ttft_ms": s["ttft"]["p50_ms"],
    }


async def _embed_load(base_url: str, clients: int, requests: int) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    todo = iter(range(requests))
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as http:

        async def client() -> None:
            nonlocal errors
            for i in todo:
                t0 = time.perf_counter()
                body = {"model": "all-minilm-l6-v2", "input": f"query number {i}: where is the capital of France?"}
                resp = await http.post("/v1/embeddings", json=body)
                latencies.append(time.perf_counter() - t0)
                errors += resp.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - started
    return {
        "requests_per_s": requests / wall,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p95_ms": percentile(latencies, 95) * 1000,
        "errors": errors,
    }


def main() -> None:
    import ray
    from ray import serve

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--configs", default="", help="only these SIZExTIMEOUT pairs, e.g. 32x20 (default: all)")
    parser.add_argument("--no-embeddings", action="store_true")
    args = parser.parse_args()
    wanted = {tuple(int(x) for x in pair.split("x")) for pair in args.configs.split(",") if pair}
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    rows: list[dict[str, Any]] = []
    try:
        for timeout_ms in TIMEOUTS_MS:
            for size in BATCH_SIZES:
                if wanted and (size, timeout_ms) not in wanted:
                    continue
                deploy(generation_config(size, timeout_ms), base_url)
                summary = bench_generation(base_url, args.out / f"gen-b{size}-t{timeout_ms}")
                rows.append({"kind": "generation", "max_batch_size": size, "batch_timeout_ms": timeout_ms} | summary)
                print(json.dumps(rows[-1])[:300], flush=True)
        for size, timeout_ms in () if args.no_embeddings else ((1, 0), (32, 5)):
            deploy(embedding_config(size, timeout_ms), base_url)
            asyncio.run(_embed_load(base_url, 8, 32))  # warm-up
            result = asyncio.run(_embed_load(base_url, 64, 1024))
            rows.append({"kind": "embeddings", "max_batch_size": size, "batch_timeout_ms": timeout_ms} | result)
            print(json.dumps(rows[-1]), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    (args.out / "command.txt").write_text("python " + " ".join(sys.argv) + "\n")


if __name__ == "__main__":
    main()
