"""`serve-app bench` against `vllm bench serve` on the same server, interleaved (issue #7, item 1).

One plain vLLM server (the embedded SmolLM2, fp32, eager, prefix caching off so that no client meets
the other's prompts in the cache) is driven by both clients in turn, the order alternating per
round, every run with prompts of its own (seed ``100 * round + 10 * concurrency index + client``).

    python benchmarks/harness_vs_vllm.py --out benchmarks/results/harness-vs-vllm
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from gpu import vllm_bench
from seed_table import MODEL_ID, PY, ROOT, VLLM_ENV, fp32_model, plain_vllm_command, stop, wait_ready

from serve_app.ports import free_port

Figures = dict[str, float]
# (our name, vLLM's JSON key, our summary path): the figures both clients report.
FIGURES = [
    ("output tok/s", "output_throughput", ("output_throughput",)),
    ("TTFT p50 (ms)", "median_ttft_ms", ("ttft", "p50_ms")),
    ("TPOT p50 (ms)", "median_tpot_ms", ("tpot", "p50_ms")),
    ("ITL p50 (ms)", "median_itl_ms", ("itl", "p50_ms")),
    ("E2E p50 (ms)", "median_e2el_ms", ("e2el", "p50_ms")),
    ("E2E mean (ms)", "mean_e2el_ms", ("e2el", "mean_ms")),
]


def start_server(port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [*plain_vllm_command(fp32_model(), port, max_model_len=1024), "--no-enable-prefix-caching"]
    env = {**os.environ, **VLLM_ENV}
    with log.open("wb") as sink:
        return subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def shape(args: argparse.Namespace) -> list[str]:
    return ["--random-input-len", str(args.input_len), "--random-output-len", str(args.output_len), "--ignore-eos"]


def run_vllm(url: str, concurrency: int, seed: int, args: argparse.Namespace) -> tuple[str, Figures]:
    argv = ["--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions", "--model", MODEL_ID]
    argv += ["--tokenizer", str(fp32_model()), "--dataset-name", "random", *shape(args)]
    argv += ["--num-prompts", str(args.num_requests), "--max-concurrency", str(concurrency), "--seed", str(seed)]
    argv += ["--request-rate", "inf", "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99"]
    result = vllm_bench.run(argv)
    return shlex.join([PY, "benchmarks/gpu/vllm_bench.py", *argv]), {n: float(result[k]) for n, k, _ in FIGURES}


def run_ours(url: str, concurrency: int, seed: int, out: Path, args: argparse.Namespace) -> tuple[str, Figures]:
    command = [str(Path(PY).with_name("serve-app")), "bench", "--url", url, "--model", MODEL_ID]
    command += ["--endpoint", "completions", "--prompts", "random", *shape(args), "--tokenizer", str(fp32_model())]
    command += ["--num-requests", str(args.num_requests), "--concurrency", str(concurrency), "--seed", str(seed)]
    command += ["--no-progress", "--out", str(out)]
    subprocess.run(command, check=True, cwd=ROOT, capture_output=True)
    summary = json.loads((out / "results.json").read_text())["levels"][0]["summary"]

    def pick(path: tuple[str, ...]) -> float:
        value: Any = summary
        for key in path:
            value = value[key]
        return float(value)

    return shlex.join(command), {name: pick(path) for name, _, path in FIGURES}


def measure(args: argparse.Namespace, url: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for r in range(args.rounds):
        for ci, concurrency in enumerate(args.concurrency):
            clients = ["serve-app", "vllm"] if r % 2 == 0 else ["vllm", "serve-app"]
            for client in clients:
                seed = 100 * r + 10 * ci + (0 if client == "serve-app" else 1)
                if client == "vllm":
                    command, figures = run_vllm(url, concurrency, seed, args)
                else:
                    command, figures = run_ours(url, concurrency, seed, args.out / f"ours-r{r}-c{concurrency}", args)
                rows.append({"round": r, "concurrency": concurrency, "client": client, "seed": seed} | figures)
                rows[-1]["command"] = command
                print(r, concurrency, client, figures, flush=True)
                (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| concurrency | round | " + " | ".join(f"{n} ours / vLLM" for n, _, _ in FIGURES) + " |"]
    lines.append("|---|---|" + "---:|" * len(FIGURES))
    for c in sorted({row["concurrency"] for row in rows}):
        for r in sorted({row["round"] for row in rows}):
            pair = {row["client"]: row for row in rows if row["concurrency"] == c and row["round"] == r}
            if len(pair) == 2:
                ratios = [pair["serve-app"][n] / pair["vllm"][n] for n, _, _ in FIGURES]
                lines.append(f"| {c} | {r} | " + " | ".join(f"{x:.3f}" for x in ratios) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/harness-vs-vllm")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4])
    parser.add_argument("--num-requests", type=int, default=16)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=32)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = start_server(port, args.out / "server.log")
    try:
        wait_ready(server, f"http://127.0.0.1:{port}/health", 600)
        rows = measure(args, f"http://127.0.0.1:{port}")
    finally:
        stop(server)
    (args.out / "summary.md").write_text(table(rows))
    print(table(rows))


if __name__ == "__main__":
    sys.exit(main())
