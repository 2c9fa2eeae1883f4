"""The goodput ladder's bookkeeping (benchmarks/gpu/goodput_ladder.py, goodput_report.py): rejections
are counted, not hidden, the best-goodput ratio compares each server's best rate, and each run keeps
its requests, so a server whose queue grows through a window shows it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "gpu"))

import goodput
import goodput_ladder
import goodput_report


def test_failed_requests_are_sorted_by_reason() -> None:
    errors = ["", "Too Many Requests", "Service Unavailable", "Traceback ...\nasyncio.TimeoutError", "Bad Request"]
    assert goodput_ladder.error_kinds(errors) == {"rejected": 2, "timed_out": 1, "failed": 1}


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
    detailed = {"errors": ["", "x" * 400]}
    assert figures == {"completed": 3, "request_goodput": 1.5, "error_texts": ["x" * 300], "detailed": detailed}
    assert "error_texts" not in goodput.compare.vllm_bench.measure(["--model", "m"])


def _detailed() -> dict:
    """Four requests as ``vllm bench serve --save-detailed`` keeps them (seconds): one fast, one
    with a slow first token, one failed, one with slow tokens after the first."""
    return {
        "start_times": [100.0, 101.0, 104.0, 107.5],
        "ttfts": [0.2, 0.9, 0.0, 0.3],
        "itls": [[0.01] * 127, [0.01] * 127, [], [0.06] * 3],
        "output_lens": [128, 128, 0, 4],
        "errors": ["", "", "Service Unavailable", ""],
    }


def test_each_request_is_kept_with_when_it_was_sent_and_its_ttft_and_tpot() -> None:
    records = goodput_ladder.request_records(_detailed())
    assert records == [[0.0, 200.0, 10.0, 128], [1.0, 900.0, 10.0, 128], [4.0, -1, -1, -1], [7.5, 300.0, 60.0, 4]]
    assert [goodput_ladder.met_slo(r, goodput_ladder.SLO) for r in records] == [True, False, False, False]


def test_the_halves_of_a_window_count_the_requests_sent_in_each_and_those_that_met_the_slo() -> None:
    records = goodput_ladder.request_records(_detailed())
    split = goodput_ladder.halves(records, seconds=8)
    assert split["first_half"] == {"sent": 2, "good": 1}
    assert split["second_half"] == {"sent": 2, "good": 0}
    assert split["second_half_goodput_rps"] == 0.0
    assert goodput_ladder.halves(records[:1], seconds=2)["second_half_goodput_rps"] == 0.0


def test_a_ladder_run_keeps_its_requests_and_halves_and_takes_its_prompts_from_rate_and_window() -> None:
    seen: list[list[str]] = []

    def bench(url: str, extra: list[str]) -> dict:
        seen.append(extra)
        return {"completed": 3, "request_goodput": 0.1, "error_texts": ["Service Unavailable"], "detailed": _detailed()}

    run = goodput_ladder.run_rate(bench, "http://x", rate=5.0, seed=7, spread=0.5, seconds=8)
    assert seen[0][seen[0].index("--num-prompts") + 1] == "40"
    assert run["errors"] == {"rejected": 1, "timed_out": 0, "failed": 0}
    assert len(run["requests"]) == 4 and run["halves"]["first_half"]["sent"] == 2
    assert "detailed" not in run
    longer = goodput_ladder.run_rate(bench, "http://x", rate=2.5, seed=7, spread=0.5, seconds=4)  # 20 prompts: 8 s
    assert longer["halves"]["second_half"]["sent"] == 2


def test_the_report_gives_second_half_goodput_where_the_ladder_kept_requests() -> None:
    def halves(good_second: int) -> dict:
        return {"first_half": {"sent": 10, "good": 10}, "second_half": {"sent": 10, "good": good_second},
                "second_half_goodput_rps": good_second / 5}  # fmt: skip

    runs = [
        _run("plain", 20, 18) | {"halves": halves(10)},
        _run("plain", 40, 15) | {"halves": halves(4)},  # its queue grew: the late requests missed
        _run("stack", 20, 20) | {"halves": halves(10)},
        _run("stack", 40, 28) | {"halves": halves(9)},
    ]
    doc = goodput_report.summarize(runs)
    fixed = doc["by_lengths"]["fixed"]
    assert fixed["best_second_half_goodput_rps"] == {"plain": 2.0, "stack": 2.0}
    assert fixed["second_half_goodput_ratio"] == 1.0
    plain_40 = next(r for r in fixed["rows"] if r["server"] == "plain" and r["rate"] == 40)
    assert (plain_40["first_half_met_slo"], plain_40["second_half_met_slo"]) == (1.0, 0.4)
    assert "| 0.80 | 100% / 40% |" in goodput_report.table(doc)
    assert "second half" not in goodput_report.table(goodput_report.summarize([_run("plain", 20, 18)]))


def test_a_ladder_round_alternates_the_first_server_and_writes_every_run(tmp_path: Path) -> None:
    calls: list[tuple[str, str]] = []

    def bench(url: str, extra: list[str]) -> dict:
        calls.append((url, extra[extra.index("--seed") + 1]))
        return {"completed": 20, "request_goodput": 1.0, "detailed": _detailed()}

    servers = [("plain", "http://plain"), ("stack", "http://stack")]
    goodput_ladder.ladder(bench, servers, tmp_path, [5.0, 10.0], (1, "spread"), seconds=8)
    # round 1: the stack first at the first rate, plain first at the next; one seed per rate for both
    assert calls == [
        ("http://stack", "1100"),
        ("http://plain", "1100"),
        ("http://plain", "1101"),
        ("http://stack", "1101"),
    ]
    runs = json.loads((tmp_path / "ladder-round1-spread.json").read_text())["runs"]
    assert [(r["server"], r["rate"], r["window_s"]) for r in runs] == [
        ("stack", 5.0, 8),
        ("plain", 5.0, 8),
        ("plain", 10.0, 8),
        ("stack", 10.0, 8),
    ]
    assert all("requests" not in r and r["halves"]["first_half"]["sent"] == 2 for r in runs)
    kept = goodput_ladder.read_requests(tmp_path / "ladder-round1-spread-requests.jsonl.gz")
    assert [(k["server"], k["rate"], len(k["requests"])) for k in kept] == [
        ("stack", 5.0, 4),
        ("plain", 5.0, 4),
        ("plain", 10.0, 4),
        ("stack", 10.0, 4),
    ]
    assert kept[0]["requests"][3] == [7.5, 300.0, 60.0, 4]
