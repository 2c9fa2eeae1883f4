"""Serving throughput of one model variant: vLLM's OpenAI server driven by ``serve-app bench`` (vLLM's own benchmark).

Used by compare.py. The server runs in its own process session and is stopped (the whole group)
before the next variant starts, so variants never share the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_app.bench.readiness import wait_until_ok
from serve_app.ports import free_port
from serve_app.quantize.onload import vllm_quantization_name

SERVER_START_TIMEOUT_S = 600


@dataclass(frozen=True)
class Level:
    clients: int
    requests: int


def parse_levels(text: str) -> list[Level]:
    """``"1x8,32x32"``: 1 client sending 8 requests one after another, then 32 clients x 32 requests."""
    levels = []
    for item in text.split(","):
        clients, _, requests = item.strip().partition("x")
        try:
            level = Level(int(clients), int(requests))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected CLIENTSxREQUESTS, got {item!r}") from None
        if level.clients < 1 or level.requests < level.clients:
            raise argparse.ArgumentTypeError(f"{item!r}: need clients >= 1 and requests >= clients")
        levels.append(level)
    return levels


def server_command(label: str, model: Path, dtype: str, quantization: str | None, max_model_len: int, port: int):
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)]
    cmd += ["--served-model-name", label, "--dtype", dtype, "--enforce-eager", "--seed", "0"]
    cmd += ["--max-model-len", str(max_model_len), "--host", "127.0.0.1", "--port", str(port)]
    if quantization:
        cmd += ["--quantization", vllm_quantization_name(quantization)]
    return cmd


def _wait_healthy(url: str, proc: subprocess.Popen) -> float:
    return wait_until_ok(url + "/health", SERVER_START_TIMEOUT_S, process=proc, period_s=2, request_timeout_s=10)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _run_levels(url: str, label: str, model: Path, levels: list[Level], max_tokens: int, out: Path) -> dict[str, Any]:
    """Each level one ``serve-app bench`` run (streaming chat: vLLM's benchmark) writing into ``out``."""
    results = {}
    for level in levels:
        level_dir = out / f"bench-{label}-c{level.clients}"
        cmd = [str(Path(sys.executable).with_name("serve-app")), "bench", "--url", url, "--model", label]
        cmd += ["--endpoint", "chat", "--prompts", "chat", "--max-tokens", str(max_tokens), "--ignore-eos"]
        cmd += ["--temperature", "0", "--tokenizer", str(model), "--concurrency", str(level.clients)]
        cmd += ["--num-requests", str(level.requests), "--warmup", "1", "--no-progress", "--out", str(level_dir)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"serve-app bench exited with {proc.returncode}: {proc.stderr[-2000:]}")
        summary = json.loads((level_dir / "results.json").read_text())["levels"][0]["summary"]
        results[str(level.clients)] = summary
        print(f"[{label}] {level.clients} client(s): {summary['output_throughput']:.1f} output tok/s", flush=True)
    return results


def measure_serving(
    label: str,
    model: Path,
    dtype: str,
    quantization: str | None,
    levels: list[Level],
    max_tokens: int,
    max_model_len: int,
    log_dir: Path,
) -> dict[str, Any]:
    """Start the server, run every level against it, stop it. A server that does not start is
    recorded (with its log's tail) instead of aborting the other variants."""
    port = free_port()
    cmd = server_command(label, model, dtype, quantization, max_model_len, port)
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU backend reads it from the environment
    log = log_dir / f"server-{label}.log"
    with log.open("w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    result: dict[str, Any] = {"server_command": cmd[1:], "max_tokens": max_tokens}
    try:
        result["server_start_s"] = round(_wait_healthy(url, proc), 1)
        result["levels"] = _run_levels(url, label, model, levels, max_tokens, log_dir)
    except (RuntimeError, TimeoutError) as err:
        tail = log.read_text(errors="replace")[-3000:]
        result |= {"levels": {}, "error": str(err), "log_tail": tail}
        print(f"[{label}] serving failed: {err}\n{tail}", flush=True)
    finally:
        _stop(proc)
    return result
