"""The seed's table measured on this machine, and 1-vs-2 replica scaling of this stack (issue #7, items 3 and 5).

Each server is started in turn as a subprocess, waited for, driven with ``serve-app bench``, measured (weights on
disk, resident memory of its whole process tree) and stopped, so no two servers share the CPU.

    python benchmarks/seed_table.py                 # -> benchmarks/results/seed-table/
    python benchmarks/seed_table.py --scaling       # -> benchmarks/results/replica-scaling/
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from serve_app.bench.readiness import wait_until_ok
from serve_app.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
MODEL_ID = "smollm2-135m-instruct"
QUANTIZED = Path("/tmp/q/smollm2-w8a8-int8")
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}


@dataclass(frozen=True)
class Server:
    name: str
    command: list[str]
    ready_path: str  # the route that answers 200 once the model serves
    weights: Path
    stream: bool  # the baselines do not stream
    num_requests: int
    env: dict[str, str] = field(default_factory=dict)


def fp32_model() -> Path:
    from serve_app.models.embedded import prepare_smollm2

    return prepare_smollm2(progress=False)


def stack_command(source: str, dtype: str, replicas: int) -> list[str]:
    """``configs/local.yaml`` with the source, dtype and replica count swapped, run by ``_stack`` below."""
    model = {"id": MODEL_ID, "source": source, "dtype": dtype, "enforce_eager": True, "max_model_len": 2048}
    model |= {"num_replicas": replicas, "readiness_expect": "Paris"}
    model["ray_actor_options"] = {"num_cpus": 1, "env_vars": VLLM_ENV}
    config = {"models": [model], "router": {"policy": "pow2"}}
    return [PY, __file__, "_stack", "--port", "{port}", "--config", json.dumps(config)]


def plain_vllm_command(
    model: Path | str, port: int | str, dtype: str = "float32", max_model_len: int = 2048
) -> list[str]:
    """Plain vLLM's OpenAI server on a local checkpoint as the benchmarks here run it: eager (bf16
    with torch.compile is wrong on this CPU), served as MODEL_ID; run it with VLLM_ENV."""
    cmd = [PY, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--served-model-name", MODEL_ID]
    return [*cmd, "--dtype", dtype, "--enforce-eager", "--max-model-len", str(max_model_len), "--port", str(port)]


def seed_servers(args: argparse.Namespace) -> list[Server]:
    model = fp32_model()
    hf = ["--model", str(model), "--model-id", MODEL_ID, "--dtype", "float32", "--port", "{port}"]
    vllm = plain_vllm_command(model, "{port}")
    batched = [PY, "benchmarks/baselines/batched_server.py", *hf, "--max-batch-size", "32", "--batch-timeout-ms", "20"]
    n, stack = args.num_requests, stack_command(f"embedded:{MODEL_ID}", "float32", 1)
    quantized = stack_command(str(QUANTIZED), "bfloat16", 1)
    servers = [
        Server("plain-vllm", vllm, "/health", model, True, n, VLLM_ENV),
        Server("this-stack", stack, "/ready", model, True, n),
        Server("batched", batched, "/health", model, False, n),
        Server("quantized-batched", quantized, "/ready", QUANTIZED, True, args.quantized_requests),
        Server(
            "naive", [PY, "benchmarks/baselines/naive_server.py", *hf], "/health", model, False, args.naive_requests
        ),
    ]
    by_name = {s.name: s for s in servers}
    return [by_name[name] for name in args.servers.split(",")]


def scaling_servers(args: argparse.Namespace) -> list[Server]:
    model, n = fp32_model(), args.num_requests
    return [
        Server(f"replicas-{r}", stack_command(f"embedded:{MODEL_ID}", "float32", r), "/ready", model, True, n)
        for r in (1, 2)
    ]


def weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def tree_rss(pid: int) -> tuple[int, int]:
    """Sum and largest RSS over the server's process tree (the largest is the process holding the weights)."""
    sizes = []
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                sizes.append(proc.memory_info().rss)
    except psutil.NoSuchProcess:
        pass
    return sum(sizes), max(sizes, default=0)


def start_plain_vllm(
    command: list[str], log: Path, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Plain vLLM's server (``plain_vllm_command``) in a session of its own (``stop`` ends its whole
    tree), with the CPU KV cache setting and ``env``, writing to ``log``; not yet ready (``wait_ready``)."""
    with log.open("wb") as out:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env={**os.environ, **VLLM_ENV, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_ready(proc: subprocess.Popen[bytes], url: str, timeout_s: float) -> float:
    return wait_until_ok(url, timeout_s, process=proc, period_s=0.5, request_timeout_s=5)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server's whole tree: its session (started with start_new_session) and any child that left it."""
    children: list[psutil.Process] = []
    with contextlib.suppress(psutil.NoSuchProcess):
        children = psutil.Process(proc.pid).children(recursive=True)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.send_signal(sig)
        _, alive = psutil.wait_procs(children, timeout=20)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        if not alive and proc.poll() is not None:
            return


def bench(server: Server, port: int, out: Path, args: argparse.Namespace, server_command: str) -> dict[str, Any]:
    command = ["serve-app", "bench", "--url", f"http://127.0.0.1:{port}", "--model", MODEL_ID]
    command += ["--endpoint", "completions", "--stream" if server.stream else "--no-stream", "--prompts", "chat"]
    command += ["--max-tokens", str(args.max_tokens), "--ignore-eos", "--concurrency", str(args.concurrency)]
    command += ["--num-requests", str(server.num_requests), "--warmup", "1", "--tokenizer", str(fp32_model())]
    command += ["--seed", "1", "--no-progress", "--out", str(out), "--server-command", server_command]
    bench_bin = str(Path(PY).with_name("serve-app"))
    subprocess.run([bench_bin, *command[1:]], check=True, cwd=ROOT)
    summary = json.loads((out / "results.json").read_text(encoding="utf-8"))["levels"][0]["summary"]
    return {"bench_command": shlex.join(command), "summary": summary}


def measure(server: Server, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    port = free_port()
    command = [c.replace("{port}", str(port)) for c in server.command]
    print(f"== {server.name}: {shlex.join(command)}", flush=True)
    env = {**os.environ, **server.env}
    log = (out_dir / f"{server.name}.server.log").open("wb")
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ready_s = wait_ready(proc, f"http://127.0.0.1:{port}{server.ready_path}", args.ready_timeout)
        rss_idle, load_before = tree_rss(proc.pid)[0], os.getloadavg()[0]
        result = bench(server, port, out_dir / server.name, args, shlex.join(command))
        rss_sum, rss_max = tree_rss(proc.pid)
        load = (load_before, os.getloadavg()[0])  # 1-min load average: the other jobs on the shared cores
    finally:
        stop(proc)
        log.close()
    s = result["summary"]
    return {
        "server": server.name,
        "server_command": shlex.join(command),
        "env": server.env,
        "ready_s": round(ready_s, 1),
        "weights_bytes": weights_bytes(server.weights),
        "rss_tree_idle_bytes": rss_idle,
        "rss_tree_after_bytes": rss_sum,
        "rss_largest_process_bytes": rss_max,
        "loadavg_1min_before_after": load,
        "stream": server.stream,
        "num_requests": server.num_requests,
        "completed": s["completed"],
        "failed": s["failed"],
        "p50_e2e_ms": s["e2el"]["p50_ms"],
        "p50_ttft_ms": s["ttft"]["p50_ms"] if server.stream else None,
        "output_tok_per_s": s["output_throughput"],
        **result,
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    mib = 1024 * 1024
    lines = [
        "| server | requests | weights on disk (MiB) | RSS tree / largest process (MiB) | p50 latency (s) "
        "| p50 TTFT (s) | output tok/s | failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ttft = f"{r['p50_ttft_ms'] / 1000:.2f}" if r["p50_ttft_ms"] is not None else "-"
        lines.append(
            f"| {r['server']} | {r['completed']}/{r['num_requests']} | {r['weights_bytes'] / mib:.0f} "
            f"| {r['rss_tree_after_bytes'] / mib:.0f} / {r['rss_largest_process_bytes'] / mib:.0f} "
            f"| {r['p50_e2e_ms'] / 1000:.1f} | {ttft} | {r['output_tok_per_s']:.1f} | {r['failed']} |"
        )
    return "\n".join(lines) + "\n"


def run_table(args: argparse.Namespace) -> None:
    out_dir = args.out or ROOT / "benchmarks" / "results" / ("replica-scaling" if args.scaling else "seed-table")
    out_dir.mkdir(parents=True, exist_ok=True)
    servers = scaling_servers(args) if args.scaling else seed_servers(args)
    rows: list[dict[str, Any]] = []
    for round_no in range(1, args.rounds + 1):
        order = servers if round_no % 2 else servers[::-1]  # alternate the order so drift hits both sides
        for server in order:
            try:
                rows.append({"round": round_no, **measure(server, args, out_dir)})
            except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as exc:
                print(f"!! {server.name} failed: {exc}", flush=True)
                rows.append({"round": round_no, "server": server.name, "error": str(exc)})
            (out_dir / "results.json").write_text(
                json.dumps(rows_doc(args, rows), indent=2, default=str), encoding="utf-8"
            )
    ok = [r for r in rows if "error" not in r]
    failed = "".join(f"- {r['server']} (round {r['round']}) failed: {r['error']}\n" for r in rows if "error" in r)
    header = f"`{shlex.join([Path(PY).name, *sys.argv])}`\n\n"
    (out_dir / "summary.md").write_text(header + markdown(ok) + failed, encoding="utf-8")
    print(header + markdown(ok) + failed, flush=True)


def rows_doc(args: argparse.Namespace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"command": shlex.join(["python", *sys.argv]), "settings": vars(args), "cpus": os.cpu_count(), "rows": rows}


def run_stack(port: int, config_json: str) -> None:
    """This stack on its own fresh local Ray (``address="local"``, never a cluster another job started)."""
    import ray
    from ray import serve

    from serve_app.app import build_app
    from serve_app.config import load_config

    # Logical CPUs: replicas ask for 1 each, the router and proxy for theirs; the 2 real cores are shared anyway.
    ray.init(address="local", num_cpus=4, include_dashboard=False, object_store_memory=300 * 1024 * 1024)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(load_config(json.loads(config_json))), name="serve-app", route_prefix="/", blocking=False)
    while True:
        time.sleep(60)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="table", choices=["table", "_stack"], help=argparse.SUPPRESS)
    parser.add_argument("--scaling", action="store_true", help="this stack with 1 and 2 replicas instead")
    parser.add_argument("--servers", default="plain-vllm,this-stack,batched,quantized-batched,naive")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, help="new tokens per request (default 200; 64 with --scaling)")
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--naive-requests", type=int, default=8, help="the naive server decodes one at a time")
    parser.add_argument("--quantized-requests", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1, help="rounds, each in the reverse order of the last")
    parser.add_argument("--out", type=Path, help="results folder (default: benchmarks/results/seed-table or ...)")
    parser.add_argument("--ready-timeout", type=float, default=420.0)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.max_tokens is None:
        args.max_tokens = 64 if args.scaling else 200
    return args


def main() -> None:
    args = parse_args()
    if args.mode == "_stack":
        run_stack(args.port, args.config)
    else:
        run_table(args)


if __name__ == "__main__":
    main()
