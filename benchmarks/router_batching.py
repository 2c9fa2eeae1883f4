"""Router batching sweep on the real stack (CPU, embedded models), one run, one Ray cluster.

Generation: SmolLM2 at 32 concurrent clients x 200 new tokens (the seed's load) for every
``batch_timeout_ms`` in {0, 5, 20} x ``max_batch_size`` in {1, 8, 32}, measured by
``serve-app bench``. Embeddings: all-MiniLM-L6-v2 at 64 concurrent clients, one input each,
with and without router batching (the configurations deployed side by side, rounds alternating).

    python benchmarks/router_batching.py --out benchmarks/results/router-batching
    # embeddings only, three alternating rounds per configuration, into their own folder:
    python benchmarks/router_batching.py --no-generation --embed-rounds 3 \
        --out benchmarks/results/router-batching/embeddings

Each generation configuration is a fresh deployment (batching settings are part of the model
config); configurations run back to back, so machine noise spreads over all of them.
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
from serve_app.models.embedded import prepare_smollm2  # noqa: E402
from serve_app.ports import free_port  # noqa: E402
from tests.integration.conftest import wait_ready  # noqa: E402

TIMEOUTS_MS = (0, 5, 20)
BATCH_SIZES = (1, 8, 32)
# (max_batch_size, batch_timeout_ms): router batching off, then on.
EMBED_CONFIGS = ((1, 0), (32, 5), (32, 20))
EMBED_CLIENT_TIMEOUT_S = 120.0


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
    cmd += ["--tokenizer", str(prepare_smollm2(progress=False))]  # vLLM's benchmark counts tokens with it
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
    """``clients`` closed-loop clients send ``requests`` one-input embedding requests in all; a
    request that times out counts as a timeout (and its latency as the client timeout)."""
    latencies: list[float] = []
    errors = timeouts = 0
    todo = iter(range(requests))
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, timeout=EMBED_CLIENT_TIMEOUT_S, limits=limits) as http:

        async def client() -> None:
            nonlocal errors, timeouts
            for i in todo:
                t0 = time.perf_counter()
                body = {"model": "all-minilm-l6-v2", "input": f"query number {i}: where is the capital of France?"}
                try:
                    resp = await http.post("/v1/embeddings", json=body)
                    errors += resp.status_code != 200
                except httpx.TimeoutException:
                    timeouts += 1
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - started
    return {
        "requests_per_s": requests / wall,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p95_ms": percentile(latencies, 95) * 1000,
        "max_ms": max(latencies) * 1000,
        "errors": errors,
        "timeouts": timeouts,
    }


def deploy_side_by_side(configs: tuple[tuple[int, int], ...], base_url: str) -> dict[tuple[int, int], str]:
    """Each embeddings configuration as its own app under its own route prefix, all at once, so
    that load rounds can alternate between them and a busy spell of the machine hits every
    configuration alike. Returns each configuration's base URL."""
    from ray import serve

    from serve_app.app import build_app

    urls: dict[tuple[int, int], str] = {}
    for size, timeout_ms in configs:
        name = f"emb-b{size}-t{timeout_ms}"
        serve.run(build_app(embedding_config(size, timeout_ms)), name=name, route_prefix=f"/{name}", blocking=False)
        urls[(size, timeout_ms)] = f"{base_url}/{name}"
    for url in urls.values():
        wait_ready(url)
    return urls


def bench_embeddings(base_url: str, rounds: int) -> list[dict[str, Any]]:
    """64 concurrent clients x 1,024 one-input requests per round, rounds alternating between
    the configurations (deployed side by side)."""
    urls = deploy_side_by_side(EMBED_CONFIGS, base_url)
    for url in urls.values():
        asyncio.run(_embed_load(url, 8, 32))  # warm-up
    rows = []
    for round_ in range(1, rounds + 1):
        for (size, timeout_ms), url in urls.items():
            result = asyncio.run(_embed_load(url, 64, 1024))
            rows.append({"kind": "embeddings", "max_batch_size": size, "batch_timeout_ms": timeout_ms} | result)
            rows[-1]["round"] = round_
            print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| kind | max_batch_size | batch_timeout_ms | round | req/s or tok/s | p50 (ms) | p95 (ms) | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["kind"] == "embeddings":
            cells = [r["round"], f"{r['requests_per_s']:.1f} req/s", f"{r['p50_ms']:.0f}", f"{r['p95_ms']:.0f}"]
            cells.append(f"{r['errors']} (+{r['timeouts']} timeouts)")
        else:
            cells = ["", f"{r['output_tok_per_s']:.1f} tok/s", f"{r['p50_e2e_ms']:.0f}", f"{r['p95_e2e_ms']:.0f}"]
            cells.append(r["failed"])
        lines.append(
            "| " + " | ".join(str(c) for c in [r["kind"], r["max_batch_size"], r["batch_timeout_ms"], *cells]) + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    import ray
    from ray import serve

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--configs", default="", help="only these SIZExTIMEOUT pairs, e.g. 32x20 (default: all)")
    parser.add_argument("--no-embeddings", action="store_true")
    parser.add_argument("--no-generation", action="store_true")
    parser.add_argument("--embed-rounds", type=int, default=1, help="load rounds per embeddings configuration")
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
                if args.no_generation or (wanted and (size, timeout_ms) not in wanted):
                    continue
                deploy(generation_config(size, timeout_ms), base_url)
                summary = bench_generation(base_url, args.out / f"gen-b{size}-t{timeout_ms}")
                rows.append({"kind": "generation", "max_batch_size": size, "batch_timeout_ms": timeout_ms} | summary)
                print(json.dumps(rows[-1])[:300], flush=True)
        if not args.no_embeddings:
            if "serve-app" in serve.status().applications:
                serve.delete("serve-app")  # the generation app: its replica would compete for the CPU
            rows += bench_embeddings(base_url, args.embed_rounds)
    finally:
        serve.shutdown()
        ray.shutdown()
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    (args.out / "results.md").write_text(markdown(rows))
    (args.out / "command.txt").write_text("python " + " ".join(sys.argv) + "\n")


if __name__ == "__main__":
    main()
