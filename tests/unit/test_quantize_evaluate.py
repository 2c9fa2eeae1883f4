"""Evaluation verdicts: perplexity rise and golden answers kept against thresholds."""

from __future__ import annotations

import math

import pytest

from serve_app.quantize.evaluate import ModelMeasurement, Thresholds, compare

QUESTIONS = [f"q{i}" for i in range(10)]


def _measurement(ppl: float, correct: set[int], tokens: int = 1000, decode_tps: float = 100.0) -> ModelMeasurement:
    return ModelMeasurement(
        model="m",
        dtype="float32",
        quantization=None,
        checkpoint_bytes=1000,
        load_s=1.0,
        heldout_tokens=tokens,
        heldout_logprob_sum=-math.log(ppl) * tokens,
        perplexity=ppl,
        prefill_tokens_per_s=50.0,
        golden=[{"question": q, "answer": "a", "reply": "", "correct": i in correct} for i, q in enumerate(QUESTIONS)],
        decode_tokens=64,
        decode_tokens_per_s=decode_tps,
    )


def test_small_changes_pass_with_deltas() -> None:
    base = _measurement(20.0, set(range(10)))
    cand = _measurement(21.0, set(range(9)), decode_tps=120.0)
    report = compare(cand, base, Thresholds(max_perplexity_increase_pct=10, min_golden_kept=0.9))
    assert report["passed"] and report["failures"] == []
    assert report["deltas"]["perplexity_pct"] == pytest.approx(5.0)
    assert report["deltas"]["golden_kept"] == 9 and report["deltas"]["golden_lost"] == ["q9"]
    assert report["deltas"]["decode_tokens_per_s_pct"] == pytest.approx(20.0)


def test_perplexity_rise_above_the_limit_fails() -> None:
    report = compare(_measurement(23.0, {1, 2}), _measurement(20.0, {1, 2}), Thresholds(10, 0.9))
    assert not report["passed"]
    assert "perplexity rose 15.00%" in report["failures"][0]


def test_losing_golden_answers_fails() -> None:
    report = compare(_measurement(20.0, {0, 1, 2}), _measurement(20.0, {0, 1, 2, 3, 4}), Thresholds(10, 0.9))
    assert not report["passed"]
    assert report["failures"] == ["kept 3/5 golden answers (60%), below the 90% minimum"]


def test_answers_the_baseline_missed_do_not_count_as_kept() -> None:
    report = compare(_measurement(20.0, {0, 5, 6}), _measurement(20.0, {0, 1}), Thresholds(10, 0.5))
    assert report["deltas"]["golden_kept"] == 1 and report["deltas"]["golden_gained"] == ["q5", "q6"]
    assert report["passed"]  # 1 of 2 kept = 50%


def test_different_tokenizers_are_not_comparable() -> None:
    with pytest.raises(ValueError, match="different tokenizers"):
        compare(_measurement(20.0, set(), tokens=999), _measurement(20.0, set()), Thresholds())


def test_thresholds_are_validated() -> None:
    with pytest.raises(ValueError):
        Thresholds(min_golden_kept=1.5)
    with pytest.raises(ValueError):
        Thresholds(max_perplexity_increase_pct=-1)


def test_measurement_round_trips_through_json_dicts() -> None:
    m = _measurement(20.0, {1})
    assert ModelMeasurement.from_dict(m.to_dict() | {"extra": 1}) == m
