"""The ninth H200 goodput run's plan (benchmarks/results/goodput-h200-r9), re-planned from committed
files: the run's profile, the seventh run's FP8 gate reports (lm-eval included) and W8A8's gate
report, the CPU's (what the run planned on) or the GPU's (made later). The planner must pick W8A8
and write the config the ladder measured."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import yaml

from serve_app.commands import plan as plan_command

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
GOAL = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu" / "goodput-goal-h200.yaml"
RUN = RESULTS / "goodput-h200-r9"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    plan_command.register(parser.add_subparsers())
    return parser


def _planned_settings(path: Path) -> dict:
    """The deployable part of a planned config (its comments name the machine's paths)."""
    return yaml.safe_load(path.read_text())["applications"][0]["args"]


def _replan(tmp_path: Path, w8a8_reports: list[Path], more_variants: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """Plans the run's goal (with ``more_variants`` among its candidates) on the seventh run's FP8
    gate folder plus ``w8a8_reports``: the plan's sidecar, and the planned settings (each checked
    against the run's own, then returned)."""
    goal = yaml.safe_load(GOAL.read_text())
    goal["model"] = "llama-3-8b"  # the shape preset in place of the run's 8B-shaped folder (same config)
    goal["variants"] += list(more_variants)
    (tmp_path / "goal.yaml").write_text(yaml.safe_dump(goal))
    gates = tmp_path / "gates"
    shutil.copytree(RESULTS / "goodput-h200-r7" / "gate", gates)
    for report in w8a8_reports:
        shutil.copy(report, gates / report.name)
    out = tmp_path / "planned.yaml"
    argv = ["plan", "--goal", str(tmp_path / "goal.yaml"), "--gate-reports", str(gates)]
    argv += ["--profile", str(RUN / "profile.json"), "--out", str(out)]
    assert plan_command.run(_parser().parse_args(argv)) == 0
    sidecar = json.loads((tmp_path / "plan.json").read_text())
    assert sidecar["chosen"] == "w8a8"
    dropped = dict(sidecar["dropped"])
    assert "lm-eval" in dropped["fp8"] and "lm-eval" in dropped["fp8-fp8kv"]
    replanned = _planned_settings(out)
    assert replanned["models"][0].pop("shape_preset") == "llama-3-8b"  # named, since the goal named it
    assert replanned == _planned_settings(RUN / "planned.yaml")
    return sidecar, replanned


def test_committed_evidence_replans_the_w8a8_config_the_ladder_measured(tmp_path: Path) -> None:
    _, replanned = _replan(tmp_path, [RESULTS / "goodput-gate-cpu" / "w8a8.json"])
    flow = replanned["flow_control"]
    assert (flow["max_in_flight"], flow["max_waiting"]) == (144, 26)


def test_the_gpu_gate_of_w8a8_replans_the_same_config(tmp_path: Path) -> None:
    """W8A8's gate on a GPU (benchmarks/results/goodput-gate-h100: perplexity, golden answers and
    lm-eval through vLLM's server, CUTLASS int8 kernels) in place of the CPU's: the planner still
    picks W8A8, on the GPU's verdict, and writes the config the ninth run's ladder measured."""
    gpu_gate = RESULTS / "goodput-gate-h100" / "gate"
    sidecar, _ = _replan(tmp_path, sorted(gpu_gate.iterdir()))
    (w8a8,) = [c for c in sidecar["candidates"] if c["variant"] == "w8a8"]
    assert "w8a8.json" in w8a8["reasons"]["gate"] and "lm-eval-w8a8.json" in w8a8["reasons"]["gate"]
    gpu_report = json.loads((gpu_gate / "w8a8.json").read_text())
    cpu_report = json.loads((RESULTS / "goodput-gate-cpu" / "w8a8.json").read_text())
    assert gpu_report["checkpoint_fingerprint"] == cpu_report["checkpoint_fingerprint"]  # one checkpoint, two gates


def test_w8a8_with_an_fp8_kv_cache_is_dropped_for_its_gate_and_w8a8_is_still_planned(tmp_path: Path) -> None:
    """W8A8 with an FP8 KV cache, gated on the CPU (benchmarks/results/goodput-saturation/gate), made
    a candidate: it loses 2 of 19 golden answers, so the planner drops it and names that report; the
    plan stays W8A8's."""
    report = RESULTS / "goodput-saturation" / "gate" / "w8a8-fp8kv.json"
    assert not json.loads(report.read_text())["passed"]
    sidecar, _ = _replan(tmp_path, [RESULTS / "goodput-gate-cpu" / "w8a8.json", report], ("w8a8-fp8kv",))
    reason = dict(sidecar["dropped"])["w8a8-fp8kv"]
    assert "w8a8-fp8kv.json" in reason and "golden" in reason
