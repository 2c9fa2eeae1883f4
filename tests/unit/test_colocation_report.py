"""benchmarks/gpu/colocation_report.py: how two engines sharing a GPU combine into the GPU's
figures, the seeds that keep runs from sharing prompts, and the round table (issue #21)."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "gpu"))

import colocation_report as report


def _figures(tok: float, ttft: float, tpot: float) -> dict:
    return {
        "output_throughput": tok,
        "request_throughput": tok / 128,
        "completed": 100,
        "failed": 0,
        "p99_ttft_ms": ttft,
        "p99_tpot_ms": tpot,
        "median_ttft_ms": ttft / 2,
        "mean_tpot_ms": tpot / 2,
    }


def test_a_pair_adds_its_throughputs_and_keeps_the_worse_latency_of_the_two():
    combined = report.combine([_figures(4000, 300, 20), _figures(4500, 250, 24)])
    assert combined["output_throughput"] == 8500
    assert combined["completed"] == 200
    assert combined["p99_ttft_ms"] == 300
    assert combined["p99_tpot_ms"] == 24


def test_no_two_runs_of_the_experiment_share_a_seed():
    runs = itertools.product(range(4), ("single", "pair"), (96, 128, 192, 256), range(2))
    seeds = [report.seed(*run) for run in runs]
    assert len(set(seeds)) == len(seeds)


def _point(mode: str, engines: list[str], c: int, tok: float, busy: float | None = 90.0) -> dict:
    return {"mode": mode, "engines": engines, "concurrency": c, "combined": _figures(tok, 400, 30)} | (
        {"gpu_utilization_pct": busy} if busy is not None else {}
    )


def _round(points: list[dict]) -> dict:
    return {"variant": "w8a8", "baseline": "bf16", "kv_cache_bytes": 12.84e9, "gpu": "H100", "points": points}


def test_the_table_gives_each_row_against_one_engine_and_against_bf16():
    points = [
        _point("single", ["bf16"], 128, 6000),
        _point("single", ["w8a8"], 128, 7500),
        _point("pair", ["w8a8", "w8a8-b"], 128, 9000, busy=None),
    ]
    rows = report.table(_round(points))
    assert rows[2].startswith("| 128 | bf16, one | 6,000 | 0.800 | 1.000 |")
    assert rows[3].startswith("| 128 | W8A8, one | 7,500 | 1.000 | 1.250 |")
    assert rows[4].startswith("| 128 | W8A8, two | 9,000 | 1.200 | 1.500 |")
    assert rows[4].endswith("| 400 | 30.0 |  |")


def test_a_failed_point_shows_its_error_and_no_ratio_is_taken_against_it():
    points = [
        _point("single", ["bf16"], 96, 5000),
        {"mode": "single", "engines": ["w8a8"], "concurrency": 96, "error": "benchmark exited 1: boom"},
        _point("pair", ["w8a8", "w8a8-b"], 96, 8000),
    ]
    rows = report.table(_round(points))
    assert "error: benchmark exited 1: boom" in rows[3]
    assert rows[4].startswith("| 96 | W8A8, two | 8,000 |  | 1.600 |")


def test_main_prints_a_table_for_each_round_file(tmp_path, capsys):
    (tmp_path / "colocation-round0.json").write_text(json.dumps(_round([_point("single", ["w8a8"], 64, 5000)])))
    assert report.main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "KV per engine 12.84 GB" in printed
    assert "| 64 | W8A8, one | 5,000 | 1.000 |  |" in printed
