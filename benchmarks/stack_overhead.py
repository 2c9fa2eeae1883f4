"""Where the stack's time goes, without a GPU: the router and replica processes with a fake engine.

The engine is serve_app.engine.fake.FakeEngine (its small OpenAI server streams one token every
``--token-delay-ms``), so what is measured is the stack alone: the door (Ray Serve's proxy,
HAProxy, or the router replica's own port), the router replica, the handle hop to the LLM
replica, and the relay of the server's bytes. Per mode (a door and a router batching setting):

* TTFT p50 at concurrency 1, against the same fake server behind bare uvicorn;
* CPU microseconds per streamed token in each process (psutil) at concurrency 64, tokens/s there;
* Ray messages per streamed token: the replica's ``stream`` yields (a counting LLMReplica).

HAProxy mode is Ray's own (``RAY_SERVE_ENABLE_HA_PROXY=1`` where Ray starts), so the modes run in
one Ray instance per door environment, each in a child process. Run it in a private network + PID
namespace (it finds Ray's processes by name; it refuses to run with interfaces besides ``lo``):

    unshare --net --pid --fork --mount-proc bash -c 'ip link set lo up; cd /work/main && \
        .venv/bin/python benchmarks/stack_overhead.py --out benchmarks/results/stack-overhead/new-path'

The app mirrors ``serve_app.app.build_app`` (same options builders), with the fake engine bound in.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psutil

from serve_app.bench.readiness import wait_until_ok
from serve_app.config import AppConfig, app_args_from_serve_file, load_config
from serve_app.engine.fake import FakeEngine
from serve_app.replica.deployment import LLMReplica
from serve_app.replica.parts import ReplicaParts, replica_parts

REPO = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
PORT, BARE_PORT = 8131, 8132
DIRECT_PORTS = range(30000, 30032)  # Ray's direct-ingress range starts at 30000
HAPROXY_DIR = "/tmp/stack-overhead-haproxy"  # Ray's default, /tmp/haproxy-serve, is shared with other jobs
DOOR_ENV: dict[str, dict[str, str]] = {
    "ray": {},
    "haproxy": {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{HAPROXY_DIR}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{HAPROXY_DIR}/admin.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": HAPROXY_DIR,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{HAPROXY_DIR}/state",
    },
}
DOORS = {  # door -> (Ray environment, the router replica serves HTTP itself)
    "Ray proxy": ("ray", False),
    "HAProxy": ("haproxy", False),
    "direct ingress": ("ray", True),
}
BATCHING: dict[str, dict[str, Any]] = {
    "off": {},
    "64/2ms/idle": {"max_batch_size": 64, "batch_timeout_ms": 2, "at_once_when_idle": True},
    "64/10ms/idle": {"max_batch_size": 64, "batch_timeout_ms": 10, "at_once_when_idle": True},
}
MODES = [(door, batching) for door in DOORS for batching in BATCHING]


class CountingReplica(LLMReplica):
    """LLMReplica counting its ``stream`` calls (router batches) and yields (Ray messages)."""

    calls = 0
    messages = 0

    async def stream(self, requests: list[Any]) -> AsyncIterator[Any]:
        self.calls += 1
        async for message in super().stream(requests):
            self.messages += 1
            yield message

    async def counts(self) -> tuple[int, int]:
        return self.calls, self.messages


def fake_engine_factory(delay_s: float) -> Any:
    def factory(parts: ReplicaParts, path: Path) -> FakeEngine:
        return FakeEngine(token_delay_s=delay_s, model_id=parts.engine.id)

    return factory


async def ttft_ms(url: str, n: int) -> list[float]:
    out = []
    async with httpx.AsyncClient(timeout=60) as client:
        for i in range(n):
            out.append(await one_stream(client, url, f"hello {i}", 16))
    return out


async def one_stream(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> float:
    """Stream one completion to its end; its TTFT in ms."""
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "stream": True}
    started, first = time.perf_counter(), None
    async with client.stream("POST", url + "/v1/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if first is None and line.startswith("data: {"):
                first = time.perf_counter() - started
    return 1000 * (first or float("nan"))


async def stream_load(url: str, concurrency: int, requests: int, max_tokens: int) -> tuple[float, list[float]]:
    """``requests`` streams, ``concurrency`` at a time: the wall time and each TTFT (ms)."""
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 8)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def one(i: int) -> float:
            async with gate:
                return await one_stream(client, url, f"hi {i}", max_tokens)

        started = time.perf_counter()
        ttfts = await asyncio.gather(*(one(i) for i in range(requests)))
    return time.perf_counter() - started, list(ttfts)


def serve_processes(app_name: str) -> dict[str, list[psutil.Process]]:
    """Our namespace's Serve processes by role (the door: Ray's proxy, or HAProxy and its manager)."""
    roles = {f"ServeReplica:{app_name}:router": "router", f"ServeReplica:{app_name}:llm-": "LLM replica"}
    roles |= {"ProxyActor": "proxy", "HAProxyManager": "haproxy manager"}
    found: dict[str, list[psutil.Process]] = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if cmd and Path(cmd[0]).name == "haproxy":
            found.setdefault("haproxy", []).append(proc)
        for key, role in roles.items():
            if key in " ".join(cmd):
                found.setdefault(role, []).append(proc)
    return found


def cpu_seconds(procs: dict[str, list[psutil.Process]]) -> dict[str, float]:
    return {role: sum(sum(p.cpu_times()[:2]) for p in ps) for role, ps in procs.items()}


def deploy(config: AppConfig, name: str, engine_factory: Any, extra_env: dict[str, str] | None = None) -> None:
    """serve_app.app.build_app's deployments, with a fake engine in a counting replica and Ray
    Serve variables added to every replica's (``extra_env``); returns without waiting."""
    from ray import serve

    from serve_app.app import ROUTER_DEPLOYMENT, ray_serve_env_vars, replica_options
    from serve_app.router.deployment import RouterDeployment

    env = ray_serve_env_vars(config.server) | (extra_env or {})
    replicas = {
        m.id: serve.deployment(CountingReplica)
        .options(**replica_options(m, config.router.replica_choice(), config.nccl, env))
        .bind(
            replica_parts(m), config.model_cache_dir, engine_factory=engine_factory, export_metrics=True, json_logs=True
        )
        for m in config.models
    }
    router = serve.deployment(serve.ingress()(RouterDeployment)).options(
        name=ROUTER_DEPLOYMENT,
        max_ongoing_requests=config.router.max_ongoing_requests,
        ray_actor_options={"num_cpus": 1, "runtime_env": {"env_vars": env}},
    )
    serve.run(router.bind(config, replicas), name=name, route_prefix="/", blocking=False)


def start_bare_server(delay_s: float) -> None:
    """The same fake OpenAI server behind bare uvicorn: the no-stack floor."""
    import uvicorn

    app = FakeEngine(token_delay_s=delay_s, model_id=MODEL).app
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


def mode_config(door: str, batching: str, base: dict) -> AppConfig:
    raw = json.loads(json.dumps(base))
    raw.setdefault("server", {})["ray_serve_direct_ingress"] = DOORS[door][1]
    raw["router"] = {"max_ongoing_requests": 4096}
    raw["models"][0]["readiness_expect"] = None  # the fake engine does not know Paris
    raw["models"][0]["batching"] = BATCHING[batching]
    return load_config(raw)


def measure_mode(door: str, batching: str, args: argparse.Namespace, base: dict) -> dict:
    from ray import serve

    from serve_app.app import replica_deployment_name

    config = mode_config(door, batching, base)
    name = f"overhead-{list(DOORS).index(door)}{list(BATCHING).index(batching)}"
    deploy(config, name, fake_engine_factory(args.token_delay_ms / 1000))
    wait_until_ok(f"http://127.0.0.1:{PORT}/ready", 300)
    url = direct_url() if DOORS[door][1] else f"http://127.0.0.1:{PORT}"
    ttft = asyncio.run(ttft_ms(url, args.ttft_requests))
    counter = serve.get_deployment_handle(replica_deployment_name(config.models[0]), app_name=name)
    procs, calls0 = serve_processes(name), counter.counts.remote().result()
    before = cpu_seconds(procs)
    wall, load_ttft = asyncio.run(stream_load(url, args.concurrency, args.requests, args.max_tokens))
    after, calls1 = cpu_seconds(procs), counter.counts.remote().result()
    serve.delete(name)
    tokens = args.requests * args.max_tokens
    return {
        "door": door,
        "batching": batching,
        "url": url,
        "ttft_p50_ms": round(statistics.median(ttft), 2),
        "load_ttft_p50_ms": round(statistics.median(load_ttft), 2),
        "tokens": tokens,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
        "cpu_us_per_token": {k: round(1e6 * (after[k] - before[k]) / tokens, 1) for k in procs},
        "replica_calls": calls1[0] - calls0[0],
        "ray_messages_per_token": round((calls1[1] - calls0[1]) / tokens, 3),
        "loadavg_after": os.getloadavg(),
    }


def run_group(args: argparse.Namespace) -> None:
    """Child process: one Ray instance (its environment set by the parent), these modes in turn."""
    import ray
    from ray import serve

    base = app_args_from_serve_file(REPO / "configs" / "local.yaml")
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    try:
        rows = [measure_mode(*MODES[i], args, base) for i in args.modes]
    finally:
        serve.shutdown()
        ray.shutdown()
    print("ROWS " + json.dumps(rows), flush=True)


def run_modes(args: argparse.Namespace, indexes: list[int]) -> list[dict]:
    """Each door environment's modes in a child process of its own (a Ray instance each)."""
    rows: list[dict] = []
    for env_name, env in DOOR_ENV.items():
        mine = [i for i in indexes if DOORS[MODES[i][0]][0] == env_name]
        if not mine:
            continue
        argv = [sys.executable, __file__, "_group", "--out", str(args.out), "--modes", *map(str, mine)]
        for flag in ("token_delay_ms", "ttft_requests", "concurrency", "requests", "max_tokens"):
            argv += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
        done = subprocess.run(argv, env=os.environ | env, capture_output=True, text=True)
        lines = [x for x in done.stdout.splitlines() if x.startswith("ROWS ")]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"{env_name} modes failed: {done.stderr[-3000:]}")
        rows += json.loads(lines[-1][5:])
    return rows


def table(bare_ttft: float, rows: list[dict]) -> str:
    lines = [
        f"Bare uvicorn + the same fake server: TTFT p50 {bare_ttft:.2f} ms.",
        "",
        "| door | router batching | TTFT p50 c=1 (ms) | over bare (ms) | TTFT p50 c=64 (ms) | router CPU/token (us)"
        " | LLM replica CPU/token (us) | door CPU/token (us) | tokens/s at c=64 | Ray messages/token | replica calls |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cpu = r["cpu_us_per_token"]
        door = sum(v for k, v in cpu.items() if k not in ("router", "LLM replica"))
        lines.append(
            f"| {r['door']} | {r['batching']} | {r['ttft_p50_ms']:.2f} | {r['ttft_p50_ms'] - bare_ttft:+.2f}"
            f" | {r['load_ttft_p50_ms']:.1f} | {cpu.get('router', 0):.0f} | {cpu.get('LLM replica', 0):.0f}"
            f" | {door:.0f} | {r['tokens_per_s']:.0f} | {r['ray_messages_per_token']:.3f} | {r['replica_calls']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("group", nargs="?", choices=["_group"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--token-delay-ms", type=float, default=10.0)
    parser.add_argument("--ttft-requests", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=192)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--modes", nargs="*", type=int, help=f"indexes into {MODES} (default: all)")
    args = parser.parse_args()
    if args.group:
        return run_group(args)
    if set(psutil.net_if_addrs()) - {"lo"}:
        sys.exit("run this inside `unshare --net --pid --fork --mount-proc` (it finds Ray's processes by name)")
    indexes = args.modes or list(range(len(MODES)))
    start_bare_server(args.token_delay_ms / 1000)
    bare = statistics.median(asyncio.run(ttft_ms(f"http://127.0.0.1:{BARE_PORT}", args.ttft_requests)))
    rows = run_modes(args, indexes)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = vars(args) | {"out": str(args.out), "modes": [MODES[i] for i in indexes], "batching": BATCHING}
    doc = {"command": " ".join(sys.argv), "args": settings, "bare_ttft_p50_ms": bare, "rows": rows}
    (args.out / "results.json").write_text(json.dumps(doc, indent=1))
    (args.out / "summary.md").write_text(table(bare, rows))
    print(table(bare, rows))


if __name__ == "__main__":
    main()
