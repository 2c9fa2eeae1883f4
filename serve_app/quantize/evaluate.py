"""Compare a (quantized) model's measurements with its baseline's and decide pass/fail (pure).

Measurements come from :mod:`serve_app.quantize.eval_worker` (one vLLM child process per model).
The verdict uses two quality thresholds; throughput is reported but never gates, because on a
shared CPU it measures the neighbours as much as the model.

* perplexity on the held-out text may rise by at most ``max_perplexity_increase_pct`` percent;
* of the golden questions the baseline answers correctly, at least ``min_golden_kept`` (a
  fraction) must still be answered correctly;
* with ``--lm-eval``, no score of the project's lm-eval tasks may fall more than the maximum drop
  (:mod:`serve_app.quantize.lm_eval_verdict`); :func:`with_lm_eval` adds that verdict to a report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from serve_app.quantize.lm_eval_verdict import Scores, judge

EVAL_REPORT_VERSION = 1


@dataclass
class ModelMeasurement:
    model: str
    dtype: str
    quantization: str | None
    checkpoint_bytes: int
    load_s: float
    heldout_tokens: int
    heldout_logprob_sum: float
    perplexity: float
    prefill_tokens_per_s: float
    golden: list[dict[str, Any]] = field(default_factory=list)
    decode_tokens: int = 0
    decode_tokens_per_s: float = 0.0
    kv_cache_dtype: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMeasurement:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    @property
    def correct_questions(self) -> set[str]:
        return {g["question"] for g in self.golden if g["correct"]}


@dataclass(frozen=True)
class Thresholds:
    max_perplexity_increase_pct: float = 10.0
    min_golden_kept: float = 0.9

    def __post_init__(self) -> None:
        if self.max_perplexity_increase_pct < 0:
            raise ValueError("max_perplexity_increase_pct must be >= 0")
        if not 0 <= self.min_golden_kept <= 1:
            raise ValueError("min_golden_kept is a fraction between 0 and 1")


def pct_change(new: float, old: float) -> float:
    return (new - old) / old * 100.0 if old else 0.0


def _pct(new: float, old: float) -> float:
    return round(pct_change(new, old), 2)


def compare(candidate: ModelMeasurement, baseline: ModelMeasurement, thresholds: Thresholds) -> dict[str, Any]:
    """The evaluation report body: both measurements' summaries, deltas, and the verdict with reasons."""
    if candidate.heldout_tokens != baseline.heldout_tokens:
        raise ValueError(
            f"held-out token counts differ ({candidate.heldout_tokens} vs {baseline.heldout_tokens}): "
            "the models use different tokenizers, so their perplexities are not comparable"
        )
    ppl_delta = pct_change(candidate.perplexity, baseline.perplexity)
    baseline_right = baseline.correct_questions
    kept = baseline_right & candidate.correct_questions
    kept_fraction = len(kept) / len(baseline_right) if baseline_right else 1.0
    failures = []
    if ppl_delta > thresholds.max_perplexity_increase_pct:
        failures.append(
            f"perplexity rose {ppl_delta:.2f}% ({baseline.perplexity:.3f} -> {candidate.perplexity:.3f}), "
            f"above the {thresholds.max_perplexity_increase_pct:g}% limit"
        )
    if kept_fraction < thresholds.min_golden_kept:
        failures.append(
            f"kept {len(kept)}/{len(baseline_right)} golden answers ({kept_fraction:.0%}), "
            f"below the {thresholds.min_golden_kept:.0%} minimum"
        )
    return {
        "report_version": EVAL_REPORT_VERSION,
        "passed": not failures,
        "failures": failures,
        "thresholds": asdict(thresholds),
        "model": summary(candidate),
        "baseline": summary(baseline),
        "deltas": {
            "perplexity_pct": round(ppl_delta, 3),
            "golden_kept": len(kept),
            "golden_baseline_correct": len(baseline_right),
            "golden_kept_fraction": round(kept_fraction, 4),
            "golden_lost": sorted(baseline_right - candidate.correct_questions),
            "golden_gained": sorted(candidate.correct_questions - baseline_right),
            "decode_tokens_per_s_pct": _pct(candidate.decode_tokens_per_s, baseline.decode_tokens_per_s),
            "prefill_tokens_per_s_pct": _pct(candidate.prefill_tokens_per_s, baseline.prefill_tokens_per_s),
        },
        "golden": {"model": candidate.golden, "baseline": baseline.golden},
    }


def summary(m: ModelMeasurement) -> dict[str, Any]:
    return {
        "path": m.model,
        "dtype": m.dtype,
        "quantization": m.quantization,
        "kv_cache_dtype": m.kv_cache_dtype,
        "checkpoint_bytes": m.checkpoint_bytes,
        "perplexity": round(m.perplexity, 4),
        "heldout_tokens": m.heldout_tokens,
        "golden_correct": len(m.correct_questions),
        "golden_total": len(m.golden),
        "prefill_tokens_per_s": round(m.prefill_tokens_per_s, 1),
        "decode_tokens_per_s": round(m.decode_tokens_per_s, 1),
        "load_s": m.load_s,
    }


def with_lm_eval(report: dict[str, Any], model: Scores, baseline: Scores, max_drop: float) -> dict[str, Any]:
    """``report`` with an ``lm_eval`` section (both models' scores, the deltas and the verdict); its
    failures join the report's, so the gate, which reads only ``passed`` and ``failures``, refuses a
    model that lm-eval fails."""
    verdict = judge(model, baseline, max_drop)
    section: dict[str, Any] = {
        "max_score_drop": max_drop,
        "scores": {"model": model, "baseline": baseline},
        "deltas": verdict.deltas,
        "passed": verdict.passed,
    }
    if verdict.missing:
        section["missing"] = verdict.missing
    failures = [*report["failures"], *verdict.failures]
    return report | {"passed": report["passed"] and verdict.passed, "failures": failures, "lm_eval": section}
