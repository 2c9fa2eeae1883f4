"""CPU side by side: plain vLLM, this stack (HAProxy door and Ray proxy door) and Ray Serve LLM.

One run measures every server in turn, in rounds whose order alternates: each server is started as
a subprocess, waited for, driven by vLLM's own benchmark (``vllm bench serve``, through
benchmarks/gpu/vllm_bench.py) at each concurrency and request shape, and stopped (its process tree,
then ``ray stop --force``), so no two servers share the CPU. Same model and engine settings for
all: the embedded SmolLM2-135M-Instruct, fp32, eager, max_model_len 2048, KV cache 1 GiB.

Run it inside a private network + PID namespace (its ports, and ``ray stop`` sees only its own
processes); it refuses to run with any network interface besides ``lo``:

    unshare --net --pid --fork --mount-proc bash -c 'ip link set lo up; cd /work/main && \
        .venv/bin/python benchmarks/cpu_compare.py --out benchmarks/results/cpu-compare'

Ray Serve LLM imports pyarrow, which the serving venv leaves out on purpose (requirements/eval.txt
says why); ``--ray-llm-site`` is a folder with it (``pip install --target DIR --no-deps pyarrow``),
put on PYTHONPATH for that server only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu import vllm_bench
from seed_table import MODEL_ID, PY, ROOT, VLLM_ENV, fp32_model, plain_vllm_command, stop, wait_ready

PORT = 8000  # configs/local.yaml's port; every server gets it in turn (private namespace)
# Ray Serve's HAProxy files default to /tmp/haproxy-serve, shared with other jobs on the machine.
HAPROXY_DIR = "/tmp/cpu-compare-haproxy"
HAPROXY_ENV = (
    {"RAY_SERVE_ENABLE_HA_PROXY": "1"}
    | {
        f"RAY_SERVE_HAPROXY_{k}": f"{HAPROXY_DIR}/{v}"
        for k, v in {
            "CONFIG_FILE_LOC": "haproxy.cfg",
            "SOCKET_PATH": "admin.sock",
            "SERVER_STATE_FILE": "state",
        }.items()
    }
    | {"RAY_SERVE_HAPROXY_SERVER_STATE_BASE": HAPROXY_DIR}
)
# `make serve` starts Ray with its workers at the engine's niceness (0) rather than Ray's default 15.
DOOR_ENV = HAPROXY_ENV | {"RAY_worker_niceness": "0"}
SHAPES = {"fixed": [], "variable": ["--random-range-ratio", "0.5"]}
FIGURES = [  # (column, vLLM's JSON key)
    ("output tok/s", "output_throughput"),
    ("TTFT p50", "median_ttft_ms"),
    ("TTFT p99", "p99_ttft_ms"),
    ("ITL p50", "median_itl_ms"),
    ("ITL p95", "p95_itl_ms"),
    ("E2E mean", "mean_e2el_ms"),
    ("E2E median", "median_e2el_ms"),
]


@dataclass(frozen=True)
class Server:
    name: str
    command: list[str]
    ready_path: str
    env: dict[str, str] = field(default_factory=dict)


def servers(args: argparse.Namespace) -> list[Server]:
    serve_bin = str(Path(PY).with_name("serve"))
    stack = [serve_bin, "run", "configs/local.yaml"]
    ray_llm_env = VLLM_ENV | {"PYTHONPATH": args.ray_llm_site} if args.ray_llm_site else VLLM_ENV
    every = [
        Server("plain-vllm", plain_vllm_command(fp32_model(), PORT), "/health", VLLM_ENV),
        Server("stack-haproxy", stack, "/ready", DOOR_ENV),
        # the same door with Ray's default worker niceness (as `make serve` started it before)
        Server("stack-haproxy-nice15", stack, "/ready", HAPROXY_ENV),
        Server("stack-ray-proxy", stack, "/ready"),
        Server("ray-serve-llm", [PY, __file__, "_ray_llm"], "/v1/models", ray_llm_env),
    ]
    return [s for s in every if s.name in args.servers.split(",")]


def serve_ray_llm() -> None:
    """Ray Serve LLM's OpenAI app on the same local model folder and engine settings."""
    import ray
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    from serve_app.models.embedded import resolve_source

    config = LLMConfig(
        model_loading_config={"model_id": MODEL_ID, "model_source": str(resolve_source(f"embedded:{MODEL_ID}"))},
        accelerator_config={"kind": "cpu"},  # without it Ray Serve LLM asks for a GPU
        engine_kwargs={"dtype": "float32", "enforce_eager": True, "max_model_len": 2048},
        deployment_config={"num_replicas": 1},
        runtime_env={"env_vars": VLLM_ENV},
    )
    # Logical CPUs: the engine's placement group takes 2 (replica + engine worker), the ingress 1;
    # the cores are the same 2 for every server. The dashboard stays on, as `serve run` gives
    # it to the stack and to any Ray Serve LLM user.
    ray.init(address="local", num_cpus=4)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    serve.run(build_openai_app({"llm_configs": [config]}), blocking=False)
    while True:
        time.sleep(60)


def answered(url: str, timeout_s: float) -> None:
    """Until one short completion answers 200 (readiness routes may come before the engine)."""
    body = {"model": MODEL_ID, "prompt": "The capital of France is", "max_tokens": 4}
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.post(url + "/v1/completions", json=body, timeout=60).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} never answered a completion")
        time.sleep(2)


def bench_argv(url: str, shape: str, concurrency: int, seed: int, args: argparse.Namespace) -> list[str]:
    argv = ["--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions", "--model", MODEL_ID]
    argv += ["--tokenizer", str(fp32_model()), "--dataset-name", "random", "--ignore-eos", *SHAPES[shape]]
    argv += ["--random-input-len", str(args.input_len), "--random-output-len", str(args.output_len)]
    argv += ["--num-prompts", str(max(args.min_prompts, args.prompts_per_slot * concurrency))]
    argv += ["--max-concurrency", str(concurrency), "--request-rate", "inf", "--seed", str(seed)]
    argv += ["--num-warmups", "2", "--percentile-metrics", "ttft,tpot,itl,e2el"]
    return [*argv, "--metric-percentiles", "50,95,99"]


def tree_cpu_s(pid: int) -> float:
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += sum(proc.cpu_times()[:4])  # user, system and children's
    return total


def measure_server(server: Server, round_no: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    url, rows = f"http://127.0.0.1:{PORT}", []
    print(f"== round {round_no}: {server.name}: {shlex.join(server.command)}", flush=True)
    log = (args.out / "logs" / f"{server.name}-r{round_no}.log").open("wb")
    env = {**os.environ, **server.env}
    proc = subprocess.Popen(
        server.command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        ready_s = wait_ready(proc, url + server.ready_path, args.ready_timeout)
        answered(url, 300)
        for shape in args.shapes.split(","):
            for concurrency in args.concurrency:
                seed = 1000 * round_no + concurrency
                argv, cpu_before, load = (
                    bench_argv(url, shape, concurrency, seed, args),
                    tree_cpu_s(proc.pid),
                    os.getloadavg(),
                )
                figures = vllm_bench.run(argv, timeout_s=1800)
                cpu_s = tree_cpu_s(proc.pid) - cpu_before
                row = {"server": server.name, "round": round_no, "shape": shape, "concurrency": concurrency}
                row |= {"ready_s": round(ready_s, 1), "loadavg_before": load, "server_tree_cpu_s": round(cpu_s, 2)}
                rows.append(
                    row | {"figures": figures, "command": shlex.join([PY, "benchmarks/gpu/vllm_bench.py", *argv])}
                )
                print(json.dumps({k: v for k, v in row.items()} | {n: figures[k] for n, k in FIGURES}), flush=True)
    finally:
        stop(proc)
        subprocess.run(
            ["ray", "stop", "--force"],
            capture_output=True,
            env=os.environ | {"PATH": f"{Path(PY).parent}:{os.environ['PATH']}"},
        )
        log.close()
    return rows


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per server, shape and concurrency: the mean over rounds of every figure, and tok/s vs plain vLLM."""
    cells: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["server"], r["shape"], r["concurrency"]), []).append(r)
    out = []
    for (name, shape, c), runs in cells.items():
        cell = {"server": name, "shape": shape, "concurrency": c, "rounds": len(runs)}
        cell |= {n: statistics.mean(run["figures"][k] for run in runs) for n, k in FIGURES}
        cell["tok/s per round"] = [round(run["figures"]["output_throughput"], 1) for run in runs]
        tokens = sum(run["figures"]["total_output_tokens"] for run in runs)
        cell["server CPU ms/token"] = 1000 * sum(run["server_tree_cpu_s"] for run in runs) / tokens
        out.append(cell)
    for cell in out:
        plain = next((p for p in out if p["server"] == "plain-vllm" and p["shape"] == cell["shape"]
                      and p["concurrency"] == cell["concurrency"]), None)  # fmt: skip
        cell["tok/s vs plain"] = cell["output tok/s"] / plain["output tok/s"] if plain else None
        cell["E2E mean/median"] = cell["E2E mean"] / cell["E2E median"]
    return sorted(out, key=lambda c: (c["shape"], c["concurrency"]))


def table(cells: list[dict[str, Any]]) -> str:
    head = "| shape | c | server | output tok/s (per round) | vs plain | TTFT p50 / p99 (ms) | ITL p50 / p95 (ms)"
    head += " | E2E mean / median (ms) | mean/median | server CPU ms/token |"
    lines = [head, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in cells:
        vs = f"{c['tok/s vs plain']:.3f}" if c["tok/s vs plain"] is not None else "-"
        stall = " (>1.1)" if c["E2E mean/median"] > 1.1 else ""
        lines.append(
            f"| {c['shape']} | {c['concurrency']} | {c['server']} | {c['output tok/s']:.1f} {c['tok/s per round']}"
            f" | {vs} | {c['TTFT p50']:.0f} / {c['TTFT p99']:.0f} | {c['ITL p50']:.1f} / {c['ITL p95']:.1f}"
            f" | {c['E2E mean']:.0f} / {c['E2E median']:.0f} | {c['E2E mean/median']:.3f}{stall}"
            f" | {c['server CPU ms/token']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def write(args: argparse.Namespace, rows: list[dict[str, Any]], errors: list[str]) -> str:
    cells = aggregate(rows)
    doc = {"command": shlex.join(sys.argv), "settings": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    doc |= {"cells": cells, "errors": errors}
    (args.out / "results.json").write_text(json.dumps(doc, indent=1, default=str))
    text = table(cells) + "".join(f"\n- {e}" for e in errors) + ("\n" if errors else "")
    (args.out / "summary.md").write_text(text)
    return text


def only_loopback() -> bool:
    return set(psutil.net_if_addrs()) <= {"lo"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", nargs="?", default="compare", choices=["compare", "_ray_llm"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/cpu-compare")
    parser.add_argument("--servers", default="plain-vllm,stack-haproxy,stack-ray-proxy,ray-serve-llm")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, each in the reverse order of the last")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16])
    parser.add_argument("--shapes", default="fixed,variable", help="fixed lengths; variable: --random-range-ratio 0.5")
    parser.add_argument("--input-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--min-prompts", type=int, default=16)
    parser.add_argument("--prompts-per-slot", type=int, default=4, help="prompts = max(min, this x concurrency)")
    parser.add_argument("--ray-llm-site", help="a folder with pyarrow, on Ray Serve LLM's PYTHONPATH")
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    args = parser.parse_args()
    if args.mode == "_ray_llm":
        return serve_ray_llm()
    if not only_loopback():
        sys.exit("run this inside `unshare --net --pid --fork --mount-proc` (it runs `ray stop --force`)")
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    for round_no in range(1, args.rounds + 1):
        order = servers(args) if round_no % 2 else servers(args)[::-1]
        for server in order:
            try:
                rows += measure_server(server, round_no, args)
            except (RuntimeError, TimeoutError, subprocess.SubprocessError) as err:
                errors.append(f"{server.name} round {round_no}: {str(err)[-1500:]}")
                print("!!", errors[-1], flush=True)
            write(args, rows, errors)
    print(write(args, rows, errors))


if __name__ == "__main__":
    main()
