"""The goodput ladder's bookkeeping (benchmarks/gpu/goodput.py, goodput_report.py): rejections are
counted, not hidden, and the best-goodput ratio compares each server's best rate."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "gpu"))

import goodput
import goodput_report


def test_failed_requests_are_sorted_by_reason() -> None:
    errors = ["", "Too Many Requests", "Service Unavailable", "Traceback ...\nasyncio.TimeoutError", "Bad Request"]
    assert goodput.error_kinds(errors) == {"rejected": 2, "timed_out": 1, "failed": 1}


def _run(server: str, rate: float, goodput_rps: float, rejected: int = 0, round_no: int = 0) -> dict:
    errors = {"rejected": rejected, "timed_out": 0, "failed": 0}
    return {"round": round_no, "lengths": "fixed", "rate": rate, "server": server, "request_goodput": goodput_rps,
            "request_throughput": goodput_rps, "completed": 100 - rejected, "errors": errors}  # fmt: skip


def test_best_goodput_ratio_compares_each_servers_best_rate_over_rounds() -> None:
    runs = [
        _run("plain", 10, 10), _run("plain", 20, 18), _run("plain", 40, 4),
        _run("stack", 10, 10), _run("stack", 20, 20), _run("stack", 40, 26, rejected=30),
        _run("stack", 40, 30, rejected=20, round_no=1), _run("plain", 40, 6, round_no=1),
    ]  # fmt: skip
    doc = goodput_report.summarize(runs)
    fixed = doc["by_lengths"]["fixed"]
    assert fixed["best_goodput_rps"] == {"plain": 18, "stack": 28}
    assert doc["best_goodput_ratio"] == round(28 / 18, 3)
    stack_40 = next(r for r in fixed["rows"] if r["server"] == "stack" and r["rate"] == 40)
    assert (stack_40["rejected"], stack_40["offered"], stack_40["goodput_per_round"]) == (50, 200, [26, 30])


def test_the_ladders_measure_runs_serve_apps_vllm_benchmark(monkeypatch: pytest.MonkeyPatch) -> None:
    """``vllm_bench.measure`` (what goodput.py and compare.py call) runs vLLM's benchmark through
    serve_app.engine.bench_serve, and keeps its numeric figures and, with --save-detailed, the reasons."""
    from serve_app.engine import bench_serve

    seen: list[list[str]] = []

    def parse(argv: list[str]) -> argparse.Namespace:
        seen.append(argv)
        return argparse.Namespace(save_detailed="--save-detailed" in argv)

    result = {"completed": 3, "request_goodput": 1.5, "backend": "openai", "errors": ["", "x" * 400]}
    monkeypatch.setattr(bench_serve, "parse", parse)
    monkeypatch.setattr(bench_serve, "run_parsed", lambda args: result)
    figures = goodput.compare.vllm_bench.measure(["--model", "m", "--save-detailed"])
    assert seen == [["--model", "m", "--save-detailed"]]
    assert figures == {"completed": 3, "request_goodput": 1.5, "error_texts": ["x" * 300]}
    assert "error_texts" not in goodput.compare.vllm_bench.measure(["--model", "m"])
