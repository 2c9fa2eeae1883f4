"""The GPU lm-eval harness (benchmarks/gpu/gate_lm_eval.py) scores a variant only on its own server:
its first GPU run scored the FP8 variants on a bf16 server left over from a timed-out start, because
their own servers could not bind the shared port and the health check passed on the leftover."""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "gpu"))

import compare
import gate_lm_eval


class _Healthy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def someone_elses_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_dead_server_does_not_pass_on_another_ones_health(someone_elses_server: str) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    dead.wait()
    with pytest.raises(RuntimeError, match="exited with 1"):
        compare.wait_for(someone_elses_server + "/health", 5, dead)


def test_a_variant_that_never_starts_is_stopped_and_recorded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    started: list[subprocess.Popen] = []

    def spawn(variant: str, flags: list[str], url: str, out: Path) -> subprocess.Popen:
        started.append(subprocess.Popen(["sleep", "600"], start_new_session=True))
        return started[-1]

    monkeypatch.setattr(gate_lm_eval, "spawn", spawn)
    args = argparse.Namespace(out=tmp_path, timeout=0.2, lm_eval_python=sys.executable)
    result = gate_lm_eval.run_variant("bf16", [], "http://127.0.0.1:9", args)
    assert result["error"].startswith("TimeoutError")
    assert "scores" not in result
    assert started[0].poll() is not None, "the server that did not start in time is still running"


def test_each_variant_has_its_own_port() -> None:
    urls = [gate_lm_eval.url_of(i) for i in range(len(gate_lm_eval.VARIANTS))]
    assert len(set(urls)) == len(urls)


def test_variants_start_at_once_and_one_failure_does_not_stop_the_others(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """All variants' servers start together (each spawn waits for the others': a harness that ran them
    in turn would break the barrier), each is scored on its own URL, fp8's failure is its error only,
    and every server is stopped."""
    chosen = list(gate_lm_eval.VARIANTS)
    all_started = threading.Barrier(len(chosen), timeout=10)
    servers: dict[str, subprocess.Popen] = {}
    scored_on: dict[str, str] = {}

    def spawn(variant: str, flags: list[str], url: str, out: Path) -> subprocess.Popen:
        servers[variant] = subprocess.Popen(["sleep", "600"], start_new_session=True)
        all_started.wait()
        return servers[variant]

    def score(variant: str, url: str, out: Path, python: str) -> dict[str, dict[str, float]]:
        scored_on[variant] = url
        if variant == "fp8":
            raise RuntimeError("lm-eval failed")
        return {"task": {"acc": 0.5}}

    monkeypatch.setattr(gate_lm_eval, "spawn", spawn)
    monkeypatch.setattr(gate_lm_eval, "score", score)
    monkeypatch.setattr(compare, "wait_for", lambda url, timeout_s, proc=None: 0.0)
    args = argparse.Namespace(out=tmp_path, timeout=5, lm_eval_python=sys.executable)
    results = gate_lm_eval.run_all(chosen, args)

    assert list(results) == [variant for variant, _ in chosen]
    assert results["fp8"]["error"] == "RuntimeError: lm-eval failed"
    assert "scores" not in results["fp8"]
    for variant in ("bf16", "fp8-fp8kv", "fp8-dynamic", "w8a8"):
        assert results[variant]["scores"] == {"task": {"acc": 0.5}}, results[variant]
    assert all("seconds" in result for result in results.values())
    assert scored_on == {variant: gate_lm_eval.url_of(i) for i, (variant, _) in enumerate(chosen)}
    assert all(proc.poll() is not None for proc in servers.values()), "a server is still running"
    verdicts = gate_lm_eval.verdicts(results, 0.05)
    assert set(verdicts) == {"fp8-fp8kv", "fp8-dynamic", "w8a8"} and all(v["passed"] for v in verdicts.values())


def test_a_checkpoint_variant_is_served_from_its_own_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    commands: dict[str, list[str]] = {}
    monkeypatch.setattr(compare, "_spawn", lambda cmd, log, env: commands.setdefault(log.name, cmd))
    for variant, flags in gate_lm_eval.VARIANTS:
        gate_lm_eval.spawn(variant, flags, gate_lm_eval.url_of(0), tmp_path)
    models = {name: cmd[cmd.index("--model") + 1] for name, cmd in commands.items()}
    for variant in ("fp8-dynamic", "w8a8"):
        assert models[f"vllm-{variant}.log"] == str(gate_lm_eval.CHECKPOINTS[variant])
    assert {models[f"vllm-{v}.log"] for v in ("bf16", "fp8", "fp8-fp8kv")} == {str(gate_lm_eval.MODEL_DIR)}


def test_engines_have_a_fixed_kv_cache() -> None:
    flags = gate_lm_eval.ENGINE_FLAGS
    assert int(flags[flags.index("--kv-cache-memory-bytes") + 1]) > 0
