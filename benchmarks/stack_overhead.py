"""Where the stack's time goes, without a GPU: the router and replica processes with a fake engine.

The engine is serve_app.engine.fake.FakeEngine (one token every ``--token-delay-ms``), so what is
measured is the stack alone: Ray Serve's proxy, the router replica, the handle hop to the LLM
replica, SSE. Per Ray Serve mode (``server.ray_serve_throughput_optimized`` and
``server.ray_serve_direct_ingress``):

* TTFT p50 at concurrency 1 against a bare FastAPI server streaming the same fake engine;
* CPU microseconds per streamed token in each process (psutil) at concurrency 64.

    python benchmarks/stack_overhead.py --out benchmarks/results/stack-overhead

The app mirrors ``serve_app.app.build_app`` (same options builders), with the fake engine bound in.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from serve_app.bench.readiness import wait_until_ok
from serve_app.config import AppConfig, ModelConfig, app_args_from_serve_file, load_config
from serve_app.engine.fake import FakeEngine

REPO = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
PORT, BARE_PORT = 8131, 8132
DIRECT_PORTS = range(30000, 30032)  # Ray's direct-ingress range starts at 30000
TP_OPT = {"ray_serve_throughput_optimized": True}
# Each mode: server options, plus model options where the mode batches at the router.
MODES: dict[str, dict[str, Any]] = {
    "default Ray Serve": {"server": {"ray_serve_throughput_optimized": False, "ray_serve_direct_ingress": False}},
    "throughput-optimized": {"server": TP_OPT | {"ray_serve_direct_ingress": False}},
    "throughput-optimized + direct ingress": {"server": TP_OPT | {"ray_serve_direct_ingress": True}},
    "throughput-optimized + direct ingress + router batching 64/2 ms": {
        "server": TP_OPT | {"ray_serve_direct_ingress": True},
        "model": {"batching": {"max_batch_size": 64, "batch_timeout_ms": 2, "at_once_when_idle": True}},
    },
}


class LongFakeEngine(FakeEngine):
    """FakeEngine's replies are 32 words; benchmarks want ``max_tokens`` of them."""

    def _reply(self, request: Any) -> list[str]:
        words = super()._reply(request)
        return (words * (request.sampling.max_tokens // len(words) + 1))[: request.sampling.max_tokens]


def fake_engine_factory(delay_s: float) -> Any:
    def factory(model: ModelConfig, path: Path) -> FakeEngine:
        return LongFakeEngine(token_delay_s=delay_s)

    return factory


async def ttft_ms(url: str, n: int) -> list[float]:
    out = []
    async with httpx.AsyncClient(timeout=60) as client:
        for i in range(n):
            body = {"model": MODEL, "prompt": f"hello {i}", "max_tokens": 16, "stream": True}
            started = time.perf_counter()
            async with client.stream("POST", url + "/v1/completions", json=body) as resp:
                first = None
                async for line in resp.aiter_lines():
                    if first is None and line.startswith("data: {"):
                        first = time.perf_counter() - started
            out.append(1000 * (first or float("nan")))
    return out


async def stream_load(url: str, concurrency: int, requests: int, max_tokens: int) -> tuple[int, float]:
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 8)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def one(i: int) -> None:
            async with gate:
                body = {"model": MODEL, "prompt": f"hi {i}", "max_tokens": max_tokens, "stream": True}
                async with client.stream("POST", url + "/v1/completions", json=body) as resp:
                    resp.raise_for_status()
                    async for _ in resp.aiter_lines():
                        pass

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
    return requests * max_tokens, time.perf_counter() - started


def serve_processes(app_name: str) -> dict[str, psutil.Process]:
    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        for role in ("router", "llm-"):
            if f"ServeReplica:{app_name}:{role}" in cmd:
                found["router" if role == "router" else "LLM replica"] = proc
        if "ProxyActor" in cmd:
            found["proxy"] = proc
    return found


def cpu_seconds(procs: dict[str, psutil.Process]) -> dict[str, float]:
    return {name: sum(p.cpu_times()[:2]) for name, p in procs.items()}


def deploy(config: AppConfig, name: str, engine_factory: Any = None, extra_env: dict[str, str] | None = None) -> None:
    """serve_app.app.build_app's deployments, with an engine factory bound in (default: vLLM) and
    Ray Serve variables added to every replica's (``extra_env``); returns without waiting."""
    from ray import serve

    from serve_app.app import ROUTER_DEPLOYMENT, ray_serve_env_vars, replica_options
    from serve_app.replica.deployment import LLMReplica
    from serve_app.router.deployment import RouterDeployment

    env = ray_serve_env_vars(config.server) | (extra_env or {})
    factory = {"engine_factory": engine_factory} if engine_factory is not None else {}
    replicas = {
        m.id: serve.deployment(LLMReplica)
        .options(**replica_options(m, config.router, config.nccl, env))
        .bind(m, config.model_cache_dir, export_metrics=True, **factory)
        for m in config.models
    }
    router = serve.deployment(serve.ingress()(RouterDeployment)).options(
        name=ROUTER_DEPLOYMENT,
        max_ongoing_requests=config.router.max_ongoing_requests,
        ray_actor_options={"num_cpus": 1, "runtime_env": {"env_vars": env}},
    )
    serve.run(router.bind(config, replicas), name=name, route_prefix="/", blocking=False)


def start_bare_server(delay_s: float) -> None:
    """The same fake engine behind a bare FastAPI + uvicorn SSE endpoint: the no-stack floor."""
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    app = FastAPI()
    engine = LongFakeEngine(token_delay_s=delay_s)

    @app.post("/v1/completions")
    async def completions(body: dict) -> StreamingResponse:
        async def events() -> Any:
            for i in range(int(body.get("max_tokens", 16))):
                await asyncio.sleep(engine.token_delay_s)
                yield "data: " + json.dumps({"choices": [{"index": 0, "text": f" t{i}"}]}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=BARE_PORT, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    time.sleep(2)


def direct_url(timeout_s: float = 60.0) -> str:
    """The router replica's own HTTP port: the first of Ray's range, or a later one while earlier
    modes' replicas still hold theirs (a deleted replica keeps its port while it drains, 30 s)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for port in DIRECT_PORTS:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 200:
                    return f"http://127.0.0.1:{port}"
            except httpx.HTTPError:
                continue
        time.sleep(1)
    raise TimeoutError(f"no router replica answered /ready on ports {DIRECT_PORTS}")


def measure_mode(label: str, options: dict[str, Any], args: argparse.Namespace, base: dict) -> dict:
    from ray import serve

    raw = json.loads(json.dumps(base))
    raw.setdefault("server", {}).update(options["server"])
    raw["router"] = {"max_ongoing_requests": 4096}
    raw["models"][0]["readiness_expect"] = None  # the fake engine does not know Paris
    raw["models"][0].update(options.get("model", {}))
    config = load_config(raw)
    name = "overhead-" + str(abs(hash(label)) % 10_000)
    deploy(config, name, engine_factory=fake_engine_factory(args.token_delay_ms / 1000))
    wait_until_ok(f"http://127.0.0.1:{PORT}/ready", 300)
    url = direct_url() if options["server"]["ray_serve_direct_ingress"] else f"http://127.0.0.1:{PORT}"
    ttft = asyncio.run(ttft_ms(url, args.ttft_requests))
    procs = serve_processes(name)
    before = cpu_seconds(procs)
    tokens, wall = asyncio.run(stream_load(url, args.concurrency, args.requests, args.max_tokens))
    after = cpu_seconds(procs)
    serve.delete(name)
    cpu_us = {k: round(1e6 * (after[k] - before[k]) / tokens, 1) for k in procs}
    return {
        "mode": label,
        "url": url,
        "ttft_p50_ms": round(statistics.median(ttft), 2),
        "tokens": tokens,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
        "cpu_us_per_token": cpu_us,
    }


def table(bare_ttft: float, rows: list[dict]) -> str:
    lines = [
        f"Bare FastAPI + the same fake engine: TTFT p50 {bare_ttft:.2f} ms.",
        "",
        "| Ray Serve mode | TTFT p50 (ms) | over bare (ms) | router CPU/token (us) | LLM replica CPU/token (us)"
        " | proxy CPU/token (us) | tokens/s at c=64 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cpu = r["cpu_us_per_token"]
        lines.append(
            f"| {r['mode']} | {r['ttft_p50_ms']:.2f} | {r['ttft_p50_ms'] - bare_ttft:+.2f} | {cpu.get('router', 0):.0f}"
            f" | {cpu.get('LLM replica', 0):.0f} | {cpu.get('proxy', 0):.0f} | {r['tokens_per_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--token-delay-ms", type=float, default=10.0)
    parser.add_argument("--ttft-requests", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=192)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--modes", nargs="*", type=int, help="indexes into MODES (default: all)")
    args = parser.parse_args()
    modes = list(MODES.items())
    modes = [modes[i] for i in args.modes] if args.modes else modes
    import ray
    from ray import serve

    base = app_args_from_serve_file(REPO / "configs" / "local.yaml")
    start_bare_server(args.token_delay_ms / 1000)
    bare = statistics.median(asyncio.run(ttft_ms(f"http://127.0.0.1:{BARE_PORT}", args.ttft_requests)))
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    try:
        rows = [measure_mode(label, options, args, base) for label, options in modes]
    finally:
        serve.shutdown()
        ray.shutdown()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps({"args": vars(args) | {"out": str(args.out)}, "bare_ttft_p50_ms": bare, "rows": rows}, indent=1)
    )
    (args.out / "summary.md").write_text(table(bare, rows))
    print(table(bare, rows))


if __name__ == "__main__":
    main()
