"""The flow queue's in-flight cap planned from a profile's tail latencies per concurrency
(serve_app.quantize.flow_cap) and how the goal planner's config carries it. Pure and fast."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.config import load_config
from serve_app.models.shapes import preset
from serve_app.quantize.flow_cap import in_flight_cap
from serve_app.quantize.gate_reports import GateVerdict
from serve_app.quantize.goal import Slo, parse_goal
from serve_app.quantize.goal_output import flow_for, plan_json, serve_config
from serve_app.quantize.goal_planner import SLO_HEADROOM, GoalPlan, goodput_rps, plan_goal
from serve_app.quantize.speed import SpeedPoint, parse_profile

SLO = Slo(ttft_p99_ms=500, tpot_p99_ms=50)  # with the 0.8 headroom: TTFT p99 <= 400 ms, TPOT p99 <= 40 ms


def tail(c: int, ttft: float, tpot: float) -> SpeedPoint:
    return SpeedPoint(c, tpot_ms=tpot / 2, ttft_p99_ms=ttft, tpot_p99_ms=tpot)


def test_ttft_p99_decides_the_cap_between_the_last_point_that_meets_and_the_first_that_misses() -> None:
    points = [tail(1, 30, 5), tail(64, 300, 20), tail(192, 700, 35), tail(384, 2000, 70)]
    cap = in_flight_cap(points, SLO, SLO_HEADROOM, max_num_seqs=192)
    # TTFT: 300 ms at 64 to 700 ms at 192 crosses 400 ms at 64 + 100/400 x 128 = 96; TPOT stays under 40.
    assert cap.seqs == 96 and cap.from_profile
    assert "c=64 (TTFT p99 300 ms, TPOT p99 20 ms)" in cap.reason and "c=192 (TTFT p99 700 ms" in cap.reason


def test_tpot_p99_decides_when_it_crosses_first() -> None:
    points = [tail(64, 300, 20), tail(192, 350, 60)]
    # TPOT: 20 ms at 64 to 60 ms at 192 crosses 40 ms at 128; TTFT stays under 400 ms.
    assert in_flight_cap(points, SLO, SLO_HEADROOM, max_num_seqs=256).seqs == 128


def test_the_cap_rounds_down_and_stops_at_the_first_miss() -> None:
    # A later point that meets the targets again does not reopen the range above the first miss.
    points = [tail(10, 100, 10), tail(20, 401, 10), tail(40, 390, 10)]
    cap = in_flight_cap(points, SLO, SLO_HEADROOM, max_num_seqs=64)
    assert cap.seqs == 19 and "c=20" in cap.reason and "c=40" not in cap.reason


def test_no_extrapolation_past_the_largest_profiled_point_and_never_above_max_num_seqs() -> None:
    points = [tail(1, 30, 5), tail(64, 100, 10)]
    assert in_flight_cap(points, SLO, SLO_HEADROOM, max_num_seqs=192).seqs == 64
    capped = in_flight_cap(points, SLO, SLO_HEADROOM, max_num_seqs=48)
    assert capped.seqs == 48 and capped.from_profile and "the profile allows 64" in capped.reason


@pytest.mark.parametrize(
    ("points", "why"),
    [
        (None, "no measured profile"),
        ([SpeedPoint(64, 10.0, ttft_ms=300)], "no TTFT p99 and TPOT p99"),
        ([tail(8, 450, 10), tail(64, 900, 30)], "even the smallest profiled point c=8"),
    ],
)
def test_without_usable_tail_latencies_the_cap_stays_max_num_seqs_and_says_why(
    points: list[SpeedPoint] | None, why: str
) -> None:
    cap = in_flight_cap(points, SLO, SLO_HEADROOM, max_num_seqs=192)
    assert cap.seqs == 192 and not cap.from_profile and why in cap.reason


def _profile(with_tails: bool) -> dict[str, Any]:
    def point(c: int, tpot: float, rate: float, ttft99: float, tpot99: float) -> dict[str, Any]:
        extra = {"ttft_p99_ms": ttft99, "tpot_p99_ms": tpot99} if with_tails else {}
        return {"concurrency": c, "tpot_ms": tpot, "output_tokens_per_s": rate} | extra

    bf16 = [point(1, 4, 250, 40, 6), point(64, 8, 5000, 250, 15), point(192, 16, 6000, 650, 30)]
    return {"gpu": "h200", "variants": {"bf16": [*bf16, point(384, 30, 6100, 1500, 60)]}}


def _plan(profile: dict[str, Any], router_replicas: int = 1, variants: tuple[str, ...] = ("bf16",)) -> GoalPlan:
    goal = {
        "model": "llama-3-8b",
        "source": "/models/llama-3-8b",
        "gpu": "h200",
        "slo": {"ttft_p99_ms": 500, "tpot_p99_ms": 50},
        "traffic": {"input_tokens": 512, "output_tokens_mean": 128},
        "variants": list(variants),
        "router_replicas": router_replicas,
    }
    points, note = parse_profile(profile, "h200")
    assert note is None
    verdicts = {v: GateVerdict(True, f"{v}.json") for v in variants if v != "bf16"}
    return plan_goal(parse_goal(goal), preset("llama-3-8b"), verdicts, points, "fake-profile.json")


def test_the_planned_flow_queue_holds_the_profiled_cap_not_max_num_seqs() -> None:
    result = _plan(_profile(with_tails=True))
    vp = result.chosen
    assert vp is not None
    # TTFT p99 250 ms at 64 to 650 ms at 192 crosses 400 ms at 64 + 150/400 x 128 = 112.
    assert vp.max_num_seqs > 112
    app = load_config(serve_config(result)["applications"][0]["args"])
    assert app.flow_control is not None and app.flow_control.max_in_flight == 112
    assert app.models[0].engine_options["max_num_seqs"] == vp.max_num_seqs  # the engine keeps its room
    sidecar = plan_json(result)["flow_control"]
    assert sidecar["engine_cap"] == 112 and sidecar["cap_from_profile"]
    assert "c=64" in sidecar["reason"] and "c=192" in sidecar["reason"]


def test_the_goodput_a_plan_reports_and_compares_is_the_one_at_the_flow_cap() -> None:
    result = _plan(_profile(with_tails=True))
    vp = result.chosen
    assert vp is not None and vp.flow_estimate is not None
    at_cap = goodput_rps(result.goal, 112, vp.flow_estimate)
    assert vp.goodput_rps == at_cap < goodput_rps(result.goal, vp.max_num_seqs, vp.estimate)
    assert vp.reasons["goodput"].startswith(f"{at_cap:.2f} requests/s estimated at the flow cap of 112 in flight")


def test_a_variant_faster_at_max_num_seqs_loses_when_its_tail_caps_it_lower() -> None:
    """fp8 here outruns bf16 at high concurrency, but its TTFT p99 crosses 400 ms at c=40 (bf16's at
    112): at their caps bf16 lets more good requests through, so the plan serves bf16."""
    profile = _profile(with_tails=True)
    fp8 = [(1, 3, 300, 40, 5), (32, 5, 4000, 300, 10), (64, 6, 7000, 700, 15), (192, 10, 9000, 900, 20)]
    fp8 += [(384, 20, 9500, 1800, 40)]
    profile["variants"]["fp8"] = [
        {"concurrency": c, "tpot_ms": t, "output_tokens_per_s": r, "ttft_p99_ms": p, "tpot_p99_ms": q}
        for c, t, r, p, q in fp8
    ]
    result = _plan(profile, variants=("bf16", "fp8"))
    assert result.chosen is not None and result.chosen.variant.id == "bf16"
    fp8_plan = next(c for c in result.candidates if c.variant.id == "fp8")
    assert fp8_plan.flow_cap is not None and fp8_plan.flow_cap.seqs == 40
    assert goodput_rps(result.goal, fp8_plan.max_num_seqs, fp8_plan.estimate) > result.chosen.goodput_rps


def test_the_cap_is_split_over_router_replicas() -> None:
    result = _plan(_profile(with_tails=True), router_replicas=2)
    assert result.chosen is not None
    assert flow_for(result.goal, result.chosen).max_in_flight == 56


def test_a_profile_without_tail_latencies_keeps_todays_rule_and_says_so() -> None:
    result = _plan(_profile(with_tails=False))
    vp = result.chosen
    assert vp is not None
    flow = flow_for(result.goal, vp)
    assert flow.max_in_flight == vp.max_num_seqs and not flow.cap_from_profile
    assert "no TTFT p99 and TPOT p99" in flow.reason


def test_the_profile_parser_reads_tail_latencies_and_rejects_bad_ones() -> None:
    points, _ = parse_profile(_profile(with_tails=True), "h200")
    assert (points["bf16"][1].ttft_p99_ms, points["bf16"][1].tpot_p99_ms) == (250.0, 15.0)
    bad = {"gpu": "h200", "variants": {"bf16": [{"concurrency": 1, "tpot_ms": 4, "ttft_p99_ms": -1}]}}
    with pytest.raises(ValueError, match="ttft_p99_ms must be a number > 0"):
        parse_profile(bad, "h200")


def test_the_h200_bf16_profile_gives_the_cap_the_eighth_ladder_ran_with() -> None:
    """The committed GPU evidence (benchmarks/results/goodput-h200-r8): bf16's steady profile gives
    the flow cap its planned.yaml holds, 114 in flight, between c=64 (meets) and c=128 (misses)."""
    folder = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "goodput-h200-r8"
    points, note = parse_profile(json.loads((folder / "profile.json").read_text()), "h200")
    assert note is None
    cap = in_flight_cap(points["bf16"], SLO, SLO_HEADROOM, max_num_seqs=344)
    assert cap.seqs == 114 and cap.from_profile
    planned = yaml.safe_load((folder / "planned.yaml").read_text())
    assert planned["applications"][0]["args"]["flow_control"]["max_in_flight"] == cap.seqs
