"""The goodput harness's profile points (benchmarks/gpu/profile_points.py): steady points keep c requests
in flight at a finite Poisson rate from an earlier profile's throughput, not one burst of c prefills
(the burst's TTFT p99 is not what the router's flow queue produces; see
benchmarks/results/goodput-h200-r6-plan/README.md)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "gpu"))

import profile_points

OUTPUT_TOKENS = 128
# bf16 in the H200's burst profile (benchmarks/results/goodput-h200-r5/profile.json), shortened
EARLIER = [
    {"concurrency": 1, "output_tokens_per_s": 211.9},
    {"concurrency": 64, "output_tokens_per_s": 5038.9},
    {"concurrency": 192, "output_tokens_per_s": 5990.8},
    {"concurrency": 384, "output_tokens_per_s": 5948.6},
]
FIGURES = {"mean_tpot_ms": 9.1234, "p99_tpot_ms": 12.3456, "median_ttft_ms": 40.04, "p99_ttft_ms": 150.06}
FIGURES |= {"output_throughput": 4000.04}


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_expected_rps_is_linear_between_points_and_flat_past_them() -> None:
    at_128 = (5038.9 + (5990.8 - 5038.9) * (128 - 64) / (192 - 64)) / OUTPUT_TOKENS
    assert profile_points.expected_rps(EARLIER, 128, OUTPUT_TOKENS) == pytest.approx(at_128)
    assert profile_points.expected_rps(EARLIER, 64, OUTPUT_TOKENS) == pytest.approx(5038.9 / OUTPUT_TOKENS)
    assert profile_points.expected_rps(EARLIER, 512, OUTPUT_TOKENS) == pytest.approx(5948.6 / OUTPUT_TOKENS)
    unordered = [EARLIER[2], EARLIER[0], EARLIER[1]]
    assert profile_points.expected_rps(unordered, 128, OUTPUT_TOKENS) == pytest.approx(at_128)
    with pytest.raises(ValueError, match="no output_tokens_per_s"):
        profile_points.expected_rps([{"concurrency": 1, "tpot_ms": 5.0}], 64, OUTPUT_TOKENS)


def test_steady_points_keep_c_in_flight_at_a_finite_rate() -> None:
    points = profile_points.plan(EARLIER, OUTPUT_TOKENS)
    assert [p.concurrency for p in points] == [1, 64, 128, 192, 256]
    assert [p.prompts for p in points] == [12, 256, 512, 768, 1024]
    assert all(p.load == "steady" and p.spread == 0.5 for p in points)
    assert math.isinf(points[0].request_rate)  # c=1: one at a time anyway
    for point in points[1:]:
        expected = 1.5 * profile_points.expected_rps(EARLIER, point.concurrency, OUTPUT_TOKENS)
        assert point.request_rate == pytest.approx(expected, abs=0.01)
    assert points[1].request_rate == pytest.approx(1.5 * 5038.9 / 128, abs=0.01)  # 59.05 requests/s at c=64


def test_a_steady_points_argv() -> None:
    point = profile_points.plan(EARLIER, OUTPUT_TOKENS)[1]
    argv = profile_points.point_argv(point)
    assert _flag(argv, "--num-prompts") == "256"
    assert _flag(argv, "--max-concurrency") == "64"
    assert float(_flag(argv, "--request-rate")) == point.request_rate
    assert _flag(argv, "--burstiness") == "1.0"  # Poisson arrivals
    assert _flag(argv, "--random-range-ratio") == "0.5"
    assert _flag(argv, "--percentile-metrics") == "ttft,tpot"
    assert _flag(argv, "--metric-percentiles") == "50,99"


def test_without_an_earlier_profile_the_points_are_the_burst() -> None:
    points = profile_points.plan(None, OUTPUT_TOKENS)
    assert [(p.concurrency, p.prompts) for p in points] == list(profile_points.BURST_POINTS)
    argv = profile_points.point_argv(points[2])
    assert argv == [
        *["--num-prompts", "192", "--max-concurrency", "192", "--seed", "192", "--request-rate", "inf"],
        *["--percentile-metrics", "ttft,tpot", "--metric-percentiles", "50,99"],
    ]


def test_a_points_record_has_what_the_planner_reads() -> None:
    point = profile_points.plan(EARLIER, OUTPUT_TOKENS)[1]
    entry = profile_points.record(point, FIGURES, 8192)
    assert entry == {
        "concurrency": 64,
        "prompts": 256,
        "request_rate": point.request_rate,
        "load": "steady",
        "tpot_ms": 9.12,
        "output_tokens_per_s": 4000.0,
        "ttft_p50_ms": 40.0,
        "ttft_p99_ms": 150.1,
        "tpot_p99_ms": 12.35,
        "max_num_batched_tokens": 8192,
    }
    first = profile_points.record(profile_points.plan(EARLIER, OUTPUT_TOKENS)[0], FIGURES, None)
    assert first["request_rate"] == "inf" and "max_num_batched_tokens" not in first


def test_measure_runs_each_point_through_the_benchmark() -> None:
    sent: list[list[str]] = []

    def bench(argv: list[str]) -> dict:
        sent.append(argv)
        return FIGURES

    points = profile_points.measure(bench, None, EARLIER, OUTPUT_TOKENS)
    assert [_flag(argv, "--max-concurrency") for argv in sent] == ["1", "64", "128", "192", "256"]
    assert [p["concurrency"] for p in points] == [1, 64, 128, 192, 256]
