"""The goal planner (serve-app plan --goal): variants per GPU, gate verdicts, memory and speed
arithmetic, and the serve config it writes. Pure: no Ray, vLLM or torch."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.commands import plan as plan_command
from serve_app.config import app_args_from_serve_file, load_config
from serve_app.models.shapes import preset
from serve_app.quantize.gate_reports import NO_PASSING_REPORT, GateVerdict, read_gate_reports
from serve_app.quantize.goal import GoalError, parse_goal
from serve_app.quantize.goal_output import TOKEN_BUDGET_MARGIN, admission_for, flow_for, plan_json, serve_config
from serve_app.quantize.goal_planner import SLO_HEADROOM, GoalPlan, VariantPlan, plan_goal
from serve_app.quantize.planner import GPUS
from serve_app.quantize.speed import ROOFLINE, parse_profile

SHAPE = preset("llama-3-8b")
ALL_GATED = (
    *("bf16-fp8kv", "fp8-dynamic", "fp8-dynamic-fp8kv", "fp8", "fp8-fp8kv"),
    *("w8a8", "w8a8-fp8kv", "awq", "awq-fp8kv", "gptq", "gptq-fp8kv"),
)


def goal_dict(**overrides: Any) -> dict[str, Any]:
    goal: dict[str, Any] = {
        "model": "llama-3-8b",
        "source": "/models/llama-3-8b",
        "gpu": "h200",
        "slo": {"ttft_p99_ms": 500, "tpot_p99_ms": 50},
        "traffic": {"input_tokens": 512, "output_tokens_mean": 128},
        "checkpoints": {
            "fp8-dynamic": "/models/fp8-dynamic",
            "w8a8": "/models/w8a8",
            "awq": "/models/awq",
            "gptq": "/models/gptq",
        },
    }
    goal.update(overrides)
    return goal


def passing(*ids: str) -> dict[str, GateVerdict]:
    return {i: GateVerdict(True, f"{i}.json") for i in ids}


def run_plan(verdicts: dict[str, GateVerdict] | None = None, profile: dict | None = None, **goal: Any) -> GoalPlan:
    verdicts = passing(*ALL_GATED) if verdicts is None else verdicts
    return plan_goal(parse_goal(goal_dict(**goal)), SHAPE, verdicts, profile or {})


def candidate(result: GoalPlan, variant_id: str) -> VariantPlan:
    return next(c for c in result.candidates if c.variant.id == variant_id)


def dropped(result: GoalPlan) -> dict[str, str]:
    return {d.variant: d.reason for d in result.dropped}


def test_a100_drops_fp8_weights_with_a_reason_and_keeps_fp8_kv_with_a_note() -> None:
    result = run_plan(gpu="a100-80gb")
    reasons = dropped(result)
    for fp8 in ("fp8", "fp8-fp8kv", "fp8-dynamic", "fp8-dynamic-fp8kv"):
        assert "no FP8 tensor cores" in reasons[fp8]
    kept = {c.variant.id for c in result.candidates}
    assert {"bf16", "bf16-fp8kv", "w8a8", "awq", "gptq", "awq-fp8kv"} <= kept
    assert "FlashInfer" in candidate(result, "bf16-fp8kv").reasons["hardware"]
    hopper = run_plan(gpu="h100-80gb")
    assert {"fp8", "fp8-fp8kv", "fp8-dynamic", "fp8-dynamic-fp8kv"} <= {c.variant.id for c in hopper.candidates}
    assert "hardware" not in candidate(hopper, "bf16-fp8kv").reasons


def test_a_failing_or_missing_gate_report_drops_the_variant_but_not_the_baseline() -> None:
    verdicts = passing("awq")
    verdicts["fp8"] = GateVerdict(False, "fp8.json", failures=("perplexity rose 12%",))
    result = run_plan(verdicts=verdicts)
    reasons = dropped(result)
    assert reasons["fp8"].startswith(NO_PASSING_REPORT) and "perplexity rose 12%" in reasons["fp8"]
    assert reasons["gptq"].startswith(NO_PASSING_REPORT)
    assert reasons["bf16-fp8kv"].startswith(NO_PASSING_REPORT)  # an FP8 KV cache needs its own verdict
    assert {c.variant.id for c in result.candidates} == {"bf16", "awq"}
    assert "baseline" in candidate(result, "bf16").reasons["gate"]


def test_gate_reports_are_read_from_either_layout_and_a_broken_one_fails(tmp_path: Path) -> None:
    (tmp_path / "awq").mkdir()
    (tmp_path / "awq" / "evaluation_report.json").write_text(
        json.dumps({"passed": True, "failures": [], "model": {"path": "/ckpt/awq"}})
    )
    (tmp_path / "fp8.json").write_text(json.dumps({"passed": False, "failures": ["kept 5/9 golden answers"]}))
    (tmp_path / "gptq.json").write_text("{not json")
    verdicts = read_gate_reports(tmp_path, ["awq", "fp8", "gptq", "w8a8"])
    assert verdicts["awq"].passed and verdicts["awq"].checkpoint == "/ckpt/awq"
    assert not verdicts["fp8"].passed and "golden" in verdicts["fp8"].reason
    assert not verdicts["gptq"].passed and "unreadable" in verdicts["gptq"].reason
    assert "w8a8" not in verdicts


def test_an_lm_eval_verdict_must_pass_too(tmp_path: Path) -> None:
    for variant in ("fp8", "fp8-fp8kv", "w8a8"):
        (tmp_path / f"{variant}.json").write_text(json.dumps({"passed": True, "failures": []}))
    lm_eval = {
        "max_score_drop": 0.05,
        "variants": {"fp8": {}, "fp8-fp8kv": {}, "w8a8": {"error": "RuntimeError: server exited with 1"}},
        "verdicts": {
            "fp8": {"deltas": {"qa/contains": -0.12, "mc/acc": -0.025}, "passed": False},
            "fp8-fp8kv": {"deltas": {"qa/contains": 0.0}, "passed": True},
        },
    }
    (tmp_path / "lm-eval.json").write_text(json.dumps(lm_eval))
    verdicts = read_gate_reports(tmp_path, ["fp8", "fp8-fp8kv", "w8a8"])
    assert not verdicts["fp8"].passed
    assert "qa/contains -0.120" in verdicts["fp8"].reason and "mc/acc" not in verdicts["fp8"].reason
    assert verdicts["fp8-fp8kv"].passed and "lm-eval.json" in verdicts["fp8-fp8kv"].origin
    assert not verdicts["w8a8"].passed and "server exited" in verdicts["w8a8"].reason
    (tmp_path / "lm-eval.json").write_text("[1]")
    assert not any(v.passed for v in read_gate_reports(tmp_path, ["fp8", "fp8-fp8kv"]).values())


def test_each_lm_eval_report_in_the_folder_judges_the_variants_it_scored(tmp_path: Path) -> None:
    """Two gate runs, one folder: the FP8 run's lm-eval report and a later W8A8 run's."""
    for variant in ("fp8", "w8a8"):
        (tmp_path / f"{variant}.json").write_text(json.dumps({"passed": True, "failures": []}))
    fp8_run = {"max_score_drop": 0.05, "verdicts": {"fp8": {"deltas": {"qa/contains": -0.12}, "passed": False}}}
    w8a8_run = {"max_score_drop": 0.05, "verdicts": {"w8a8": {"deltas": {"qa/contains": 0.04}, "passed": True}}}
    (tmp_path / "lm-eval.json").write_text(json.dumps(fp8_run))
    (tmp_path / "lm-eval-w8a8.json").write_text(json.dumps(w8a8_run))
    verdicts = read_gate_reports(tmp_path, ["fp8", "w8a8"])
    assert not verdicts["fp8"].passed and "lm-eval.json" in verdicts["fp8"].origin
    assert verdicts["w8a8"].passed and verdicts["w8a8"].origin.endswith("lm-eval-w8a8.json")
    (tmp_path / "lm-eval-later.json").write_text(
        json.dumps({"max_score_drop": 0.05, "verdicts": {"w8a8": {"deltas": {"qa/contains": -0.2}, "passed": False}}})
    )
    assert not read_gate_reports(tmp_path, ["w8a8"])["w8a8"].passed  # every report that judges it must pass
    (tmp_path / "lm-eval-later.json").write_text("{broken")
    assert not any(v.passed for v in read_gate_reports(tmp_path, ["fp8", "w8a8"]).values())


def test_the_h200_gate_with_lm_eval_drops_both_fp8_variants_of_smollm2() -> None:
    """The committed GPU evidence (benchmarks/results/goodput-h200-r7/gate): perplexity and golden
    answers passed both FP8 variants; lm-eval through the API did not."""
    gate = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "goodput-h200-r7" / "gate"
    verdicts = read_gate_reports(gate, ["fp8", "fp8-fp8kv"])
    assert set(verdicts) == {"fp8", "fp8-fp8kv"}
    assert not any(v.passed for v in verdicts.values())
    assert all("serve_app_facts_qa/contains" in v.reason for v in verdicts.values())


def test_the_cpu_gate_with_lm_eval_passes_smollm2s_w8a8_checkpoint() -> None:
    """The committed CPU evidence (benchmarks/results/goodput-gate-cpu): `serve-app evaluate --lm-eval`
    passed the W8A8 int8 checkpoint on perplexity, golden answers and lm-eval through vLLM's server."""
    folder = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "goodput-gate-cpu"
    verdict = read_gate_reports(folder, ["w8a8"])["w8a8"]
    assert verdict.passed and verdict.checkpoint == "/tmp/smollm2-w8a8"
    lm_eval = json.loads((folder / "w8a8.json").read_text())["lm_eval"]
    assert lm_eval["passed"] and min(lm_eval["deltas"].values()) >= -lm_eval["max_score_drop"]
    plan = run_plan(verdicts={"w8a8": verdict}, variants=["bf16", "w8a8"], checkpoints={"w8a8": "/models/w8a8"})
    assert {c.variant.id for c in plan.candidates} == {"bf16", "w8a8"}


def test_a_checkpoint_variant_without_a_checkpoint_is_dropped_and_a_gate_report_can_name_one() -> None:
    verdicts = {"awq": GateVerdict(True, "awq.json", checkpoint="/from/report"), **passing("gptq")}
    result = run_plan(verdicts=verdicts, checkpoints={})
    assert candidate(result, "awq").source == "/from/report"
    assert "no gptq checkpoint" in dropped(result)["gptq"]


def test_fp8_kv_doubles_the_kv_token_capacity() -> None:
    result = run_plan()
    bf16, fp8kv = candidate(result, "bf16"), candidate(result, "bf16-fp8kv")
    assert fp8kv.memory.kv_bytes_per_token * 2 == bf16.memory.kv_bytes_per_token
    # same weights; the reserve differs only if max_num_seqs/batched tokens differ, which they do not here
    assert (fp8kv.max_num_seqs, fp8kv.max_num_batched_tokens) == (bf16.max_num_seqs, bf16.max_num_batched_tokens)
    assert fp8kv.memory.kv_cache_tokens in (2 * bf16.memory.kv_cache_tokens, 2 * bf16.memory.kv_cache_tokens + 1)
    assert fp8kv.kv_capacity_seqs >= 2 * bf16.kv_capacity_seqs


def test_a_tighter_tpot_slo_lowers_max_num_seqs() -> None:
    loose = candidate(run_plan(), "bf16")
    tight = candidate(run_plan(slo={"ttft_p99_ms": 500, "tpot_p99_ms": 20}), "bf16")
    assert tight.max_num_seqs < loose.max_num_seqs
    assert tight.estimate.tpot_ms <= 20 * 0.8 and "stopped by the TPOT target" in tight.reasons["max_num_seqs"]
    assert tight.goodput_rps < loose.goodput_rps


def test_the_kv_cache_bounds_max_num_seqs_when_memory_is_short() -> None:
    result = run_plan(gpu="a100-40gb", traffic={"input_tokens": 3000, "output_tokens_mean": 1000})
    bf16 = candidate(result, "bf16")
    assert bf16.max_num_seqs <= bf16.kv_capacity_seqs and "stopped by the KV cache" in bf16.reasons["max_num_seqs"]
    assert candidate(result, "awq").max_num_seqs > bf16.max_num_seqs  # smaller weights, more KV room


def test_every_choice_has_a_reason_and_the_speed_source_is_labelled() -> None:
    for c in run_plan().candidates:
        assert set(c.reasons) >= {"gate", "memory", "max_num_seqs", "max_num_batched_tokens", "speed", "goodput"}
        assert c.reasons["speed"] == ROOFLINE
        assert c.max_num_batched_tokens >= c.max_num_seqs  # vLLM refuses fewer


def test_ties_go_to_the_more_precise_variant_and_a_clear_win_to_the_faster_one() -> None:
    result = run_plan(verdicts=passing("awq", "bf16-fp8kv"))
    # Both compute at the 16-bit peak, so the roofline sees no gain: precision wins.
    assert result.chosen is not None and result.chosen.variant.id == "bf16"
    fp8 = run_plan(verdicts=passing("fp8"))
    assert fp8.chosen is not None and fp8.chosen.variant.id == "fp8" and "above bf16" in fp8.choice_reason


def test_a_measured_profile_replaces_the_roofline() -> None:
    profile = {
        "gpu": "h200",
        "variants": {
            "bf16": [{"concurrency": 1, "tpot_ms": 8}, {"concurrency": 64, "output_tokens_per_s": 3200}],
            "awq": [{"concurrency": 1, "tpot_ms": 6}, {"concurrency": 64, "tpot_ms": 12, "ttft_ms": 80}],
        },
    }
    points, note = parse_profile(profile, "h200")
    assert note is None and points["bf16"][1].tpot_ms == 20.0  # 64 sequences sharing 3200 tok/s
    result = run_plan(verdicts=passing("awq"), profile=points)
    awq, bf16 = candidate(result, "awq"), candidate(result, "bf16")
    assert awq.reasons["speed"].startswith("measured profile")
    assert awq.max_num_seqs > bf16.max_num_seqs and result.chosen is awq
    other_gpu, note = parse_profile(profile, "a100-80gb")
    assert other_gpu == {} and note is not None and "ignored" in note


def test_the_planned_config_validates_against_the_app_schema() -> None:
    for gpu in ("h200", "a100-40gb"):
        result = run_plan(gpu=gpu, traffic={"input_tokens": 512, "output_tokens_mean": 128, "output_tokens_spread": 64})
        config = serve_config(result)
        app = load_config(config["applications"][0]["args"])
        model = app.models[0]
        assert model.engine_options["max_num_seqs"] == result.chosen.max_num_seqs  # type: ignore[union-attr]
        assert model.default_max_tokens == 128 + 2 * 64
        assert app.router.max_queued_tokens == admission_for(result.goal, result.chosen).max_queued_tokens  # type: ignore[arg-type]


def test_fp8_config_quantizes_on_load_on_a_gpu() -> None:
    result = run_plan(verdicts=passing("fp8-fp8kv"), variants=["bf16", "fp8-fp8kv"])
    model = load_config(serve_config(result)["applications"][0]["args"]).models[0]
    assert model.quantization == "fp8" and model.kv_cache_dtype == "fp8" and model.ray_actor_options.num_gpus == 1
    assert dropped(result)["awq"] == "not among the goal's variants"


def test_an_fp8_dynamic_checkpoint_is_served_from_its_folder_with_no_quantize_on_load() -> None:
    """FP8_DYNAMIC (per-channel weight scales, per-token activation scales) comes as a checkpoint:
    vLLM reads its method from the checkpoint's config.json, so the config leaves quantization unset."""
    result = run_plan(verdicts=passing("fp8-dynamic"), variants=["bf16", "fp8-dynamic"])
    assert result.chosen is not None and result.chosen.variant.id == "fp8-dynamic"
    model = load_config(serve_config(result)["applications"][0]["args"]).models[0]
    assert model.quantization is None and model.source == "/models/fp8-dynamic"
    fp8_weights = candidate(run_plan(), "fp8").memory.weight_bytes_total
    assert candidate(result, "fp8-dynamic").memory.weight_bytes_total == fp8_weights
    no_checkpoint = run_plan(verdicts=passing("fp8-dynamic"), variants=["bf16", "fp8-dynamic"], checkpoints={})
    assert "no fp8-dynamic checkpoint" in dropped(no_checkpoint)["fp8-dynamic"]


def test_with_equal_speed_fp8_dynamic_wins_over_online_fp8_for_its_precision() -> None:
    result = run_plan(verdicts=passing("fp8", "fp8-dynamic"), variants=["bf16", "fp8", "fp8-dynamic"])
    assert result.chosen is not None and result.chosen.variant.id == "fp8-dynamic"


def test_admission_budget_holds_running_sequences_plus_what_meets_the_ttft_target() -> None:
    result = run_plan(router_replicas=2)
    vp = result.chosen
    assert vp is not None
    admission = admission_for(result.goal, vp)
    assert admission.request_cost_tokens == 512 + 128
    assert admission.max_queued_requests * 2 >= vp.max_num_seqs
    assert admission.max_queued_tokens == admission.max_queued_requests * 640 * TOKEN_BUDGET_MARGIN
    assert "router.max_queued_tokens" in admission.reason and "{running}" not in admission.reason


def test_flow_control_times_the_waiting_budget_under_the_ttft_target() -> None:
    result = run_plan(router_replicas=2)
    vp = result.chosen
    assert vp is not None
    flow = flow_for(result.goal, vp)
    assert flow.max_in_flight * 2 >= vp.max_num_seqs  # the engines stay full across both routers
    assert 0.05 <= flow.max_wait_s < result.goal.slo.ttft_p99_ms / 1000 * SLO_HEADROOM / 2 + 1e-9
    assert flow.max_waiting >= 1 and "503" in flow.reason
    app = load_config(serve_config(result)["applications"][0]["args"])
    assert app.flow_control is not None and not app.flow_control.tenants  # every request is "default"
    assert app.flow_control.max_in_flight == flow.max_in_flight
    assert app.flow_control.class_queue("interactive").max_wait_s == flow.max_wait_s
    assert app.flow_control.default.priority == "interactive"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    plan_command.register(parser.add_subparsers())
    return parser


def test_plan_command_writes_a_commented_config_and_plan_json(tmp_path: Path) -> None:
    (tmp_path / "goal.yaml").write_text(yaml.safe_dump(goal_dict(gpu="a100-80gb")))
    gates = tmp_path / "gates"
    gates.mkdir()
    (gates / "awq.json").write_text(json.dumps({"passed": True, "failures": [], "model": {"path": "/m/awq"}}))
    out = tmp_path / "config.yaml"
    argv = ["plan", "--goal", str(tmp_path / "goal.yaml"), "--gate-reports", str(gates), "--out", str(out)]
    assert plan_command.run(_parser().parse_args(argv)) == 0
    text = out.read_text()
    assert text.startswith("# Planned by `serve-app plan --goal`") and "no FP8 tensor cores" in text
    app = load_config(app_args_from_serve_file(out))
    assert app.models[0].id == "llama-3-8b"
    sidecar = json.loads((tmp_path / "plan.json").read_text())
    assert sidecar["chosen"] in {c["variant"] for c in sidecar["candidates"]}
    assert ["gptq", "no passing gate report: none for 'gptq'"] in sidecar["dropped"]


def test_plan_command_without_goal_still_needs_model_and_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    assert plan_command.run(_parser().parse_args(["plan", "--gpu", "h200"])) == 2
    assert "--model and --gpu are required" in capsys.readouterr().err


def test_goal_errors_name_the_key() -> None:
    with pytest.raises(GoalError, match="gpu"):
        parse_goal(goal_dict(gpu="t4"))
    with pytest.raises(GoalError, match=r"slo\.tpot_p99_ms"):
        parse_goal(goal_dict(slo={"ttft_p99_ms": 500}))
    with pytest.raises(GoalError, match="source"):
        parse_goal({k: v for k, v in goal_dict().items() if k != "source"})
    with pytest.raises(GoalError, match="unknown goal keys"):
        parse_goal(goal_dict(slos={}))
    with pytest.raises(GoalError, match="a goal is a mapping"):
        parse_goal(None)
    with pytest.raises(ValueError, match="unknown variant 'awq4'"):
        parse_profile({"variants": {"awq4": [{"concurrency": 1, "tpot_ms": 5}]}}, "h200")


def test_plan_json_lists_every_variant_once() -> None:
    sidecar = plan_json(run_plan(gpu="a100-80gb"))
    ids = [c["variant"] for c in sidecar["candidates"]] + [d[0] for d in sidecar["dropped"]]
    assert sorted(ids) == sorted(["bf16", *ALL_GATED]) and GPUS["a100-80gb"].memory_bandwidth_gbps == 2039


def test_max_num_seqs_stops_where_a_profile_shows_goodput_falling() -> None:
    saturating = [
        {"concurrency": 1, "tpot_ms": 10},
        {"concurrency": 64, "tpot_ms": 20},
        {"concurrency": 128, "tpot_ms": 60},
    ]
    points, _ = parse_profile({"variants": {"bf16": saturating}}, "h200")
    bf16 = candidate(run_plan(verdicts={}, profile=points), "bf16")
    # TPOT reaches the 40 ms target at c=96, but 96 sequences at 40 ms make fewer tokens/s than 64 at 20 ms.
    assert bf16.max_num_seqs == 64
    assert "the largest such is 96" in bf16.reasons["max_num_seqs"]


def test_plan_command_exits_1_when_no_variant_is_left(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "goal.yaml").write_text(yaml.safe_dump(goal_dict(variants=["awq"])))
    assert plan_command.run(_parser().parse_args(["plan", "--goal", str(tmp_path / "goal.yaml")])) == 1
    captured = capsys.readouterr()
    assert "nothing to deploy" in captured.err and json.loads(captured.out)["chosen"] is None


def test_measured_throughput_caps_the_goodput_estimate() -> None:
    # GPU run (benchmarks/results/goodput-h200/profile/profile.json): closed-loop TPOT alone would
    # promise c / (128 x TPOT) requests/s, but the measured tokens/s shows what prefill stalls leave.
    fp8 = [
        {"concurrency": 1, "tpot_ms": 3.16, "output_tokens_per_s": 298.0},
        {"concurrency": 64, "tpot_ms": 6.14, "output_tokens_per_s": 7102.8},
        {"concurrency": 192, "tpot_ms": 13.9, "output_tokens_per_s": 8566.4},
        {"concurrency": 384, "tpot_ms": 29.88, "output_tokens_per_s": 8357.4},
    ]
    points, _ = parse_profile({"gpu": "h200", "variants": {"fp8": fp8}}, "h200")
    vp = candidate(run_plan(verdicts=passing("fp8"), profile=points), "fp8")
    assert vp.max_num_seqs == 192
    assert vp.goodput_rps == pytest.approx(8566.4 / 128)
    assert "at most the measured 66.9 requests/s" in vp.reasons["goodput"]
    tpot_only = [{k: v for k, v in p.items() if k != "output_tokens_per_s"} for p in fp8]
    points, _ = parse_profile({"gpu": "h200", "variants": {"fp8": tpot_only}}, "h200")
    assert candidate(run_plan(verdicts=passing("fp8"), profile=points), "fp8").goodput_rps > 100


def test_a_profile_measured_with_more_batched_tokens_keeps_that_setting() -> None:
    # The profile's TPOT and throughput came from an engine with max_num_batched_tokens 8192: the plan
    # keeps it where it holds the need, instead of the smallest choice that does.
    fp8 = [
        {"concurrency": 64, "tpot_ms": 6.14, "output_tokens_per_s": 7102.8, "max_num_batched_tokens": 8192},
        {"concurrency": 192, "tpot_ms": 13.9, "output_tokens_per_s": 8566.4, "max_num_batched_tokens": 8192},
    ]
    points, _ = parse_profile({"gpu": "h200", "variants": {"fp8": fp8}}, "h200")
    vp = candidate(run_plan(verdicts=passing("fp8"), profile=points), "fp8")
    assert vp.max_num_batched_tokens == 8192
    assert vp.reasons["max_num_batched_tokens"].startswith("8192: the engine setting the profile measured")
    unnamed = [{k: v for k, v in p.items() if k != "max_num_batched_tokens"} for p in fp8]
    points, _ = parse_profile({"gpu": "h200", "variants": {"fp8": unnamed}}, "h200")
    smallest = candidate(run_plan(verdicts=passing("fp8"), profile=points), "fp8")
    assert smallest.max_num_batched_tokens < 8192 and "the smallest of" in smallest.reasons["max_num_batched_tokens"]
    with pytest.raises(ValueError, match="max_num_batched_tokens must be a whole number"):
        parse_profile({"variants": {"fp8": [{"concurrency": 1, "tpot_ms": 3, "max_num_batched_tokens": "x"}]}}, "h200")
