"""The lm-eval verdict (serve_app.quantize.lm_eval_verdict): one implementation for `serve-app
evaluate --lm-eval` and benchmarks/gpu/gate_lm_eval.py, worded as the planner's gate words it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from serve_app.quantize.gate_reports import lm_eval_failures
from serve_app.quantize.lm_eval_verdict import judge

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "gpu"))

import gate_lm_eval

REPO = Path(__file__).resolve().parents[2]
QA, MC = "serve_app_facts_qa", "serve_app_facts_mc"
BASELINE = {MC: {"acc": 0.65, "acc_norm": 0.6}, QA: {"contains": 0.76}}


def test_equal_scores_pass_with_zero_deltas() -> None:
    verdict = judge(BASELINE, BASELINE, 0.05)
    assert verdict.passed and verdict.failures == []
    assert verdict.deltas == {f"{MC}/acc": 0.0, f"{MC}/acc_norm": 0.0, f"{QA}/contains": 0.0}


def test_a_drop_of_exactly_the_limit_passes_and_just_over_it_fails() -> None:
    at_limit = {MC: {"acc": 0.6, "acc_norm": 0.55}, QA: {"contains": 0.71}}
    assert judge(at_limit, BASELINE, 0.05).passed  # 0.71 - 0.76 is -0.05000000000000004 in floats
    over = {MC: {"acc": 0.65, "acc_norm": 0.7}, QA: {"contains": 0.709}}
    verdict = judge(over, BASELINE, 0.05)
    assert not verdict.passed
    assert verdict.deltas[f"{MC}/acc_norm"] == 0.1  # a rise is reported, never held against it
    assert verdict.failures == [f"lm-eval: {QA}/contains -0.051 against the baseline (max drop 0.05)"]


def test_a_metric_or_task_missing_from_the_candidate_fails() -> None:
    verdict = judge({MC: {"acc": 0.65}}, BASELINE, 0.05)
    assert not verdict.passed
    assert verdict.missing == [f"{MC}/acc_norm", f"{QA}/contains"]
    assert verdict.failures == [f"lm-eval: {MC}/acc_norm, {QA}/contains missing from the model's scores"]
    assert judge({**BASELINE, "extra": {"acc": 0.0}}, BASELINE, 0.05).passed  # nothing to compare it with


def test_no_baseline_scores_is_no_pass() -> None:
    verdict = judge({}, {}, 0.05)
    assert not verdict.passed and verdict.failures == ["lm-eval: the baseline has no scores to compare with"]


def test_a_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        judge(BASELINE, BASELINE, -0.1)


def test_the_failure_reads_as_the_planner_words_a_gate_lm_eval_verdict() -> None:
    verdict = judge({MC: {"acc": 0.6, "acc_norm": 0.5}, QA: {"contains": 0.64}}, BASELINE, 0.05)
    report = {"max_score_drop": 0.05, "verdicts": {"fp8": {"deltas": verdict.deltas, "passed": verdict.passed}}}
    assert lm_eval_failures(report, "fp8") == tuple(verdict.failures)


@pytest.mark.parametrize(
    "path",
    ["benchmarks/results/goodput-h200-r7/gate/lm-eval.json", "benchmarks/results/lm-eval-h200/run2/lm-eval.json"],
)
def test_gate_lm_eval_still_writes_the_committed_verdicts(path: str) -> None:
    """gate_lm_eval.verdicts now calls judge: on the committed runs' scores it gives their verdicts."""
    report = json.loads((REPO / path).read_text())
    assert gate_lm_eval.verdicts(report["variants"], report["max_score_drop"]) == report["verdicts"]
