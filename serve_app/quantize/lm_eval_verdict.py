"""lm-eval scores of a model against its baseline's: per-metric deltas and the verdict (stdlib only).

The one implementation behind both places that judge lm-eval scores: ``serve-app evaluate --lm-eval``
and ``benchmarks/gpu/gate_lm_eval.py``. Scores are :func:`serve_app.quantize.lm_eval_task.read_scores`'s,
per task: ``{task: {metric: value}}``. A delta is the candidate's score minus the baseline's, keyed
``task/metric``. The verdict passes when no delta falls more than ``max_drop`` and the candidate has
every metric the baseline has: a metric it lacks was never measured, so it cannot count as kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

Scores = Mapping[str, Mapping[str, float]]
DELTA_DIGITS = 4  # lm-eval scores are fractions of at most a few hundred items
# The gate's default limit on a score's fall below the baseline's (serve-app evaluate --max-lm-eval-drop).
MAX_SCORE_DROP = 0.05


@dataclass(frozen=True)
class LmEvalVerdict:
    deltas: dict[str, float]
    max_drop: float
    missing: list[str] = field(default_factory=list)

    @property
    def drops(self) -> dict[str, float]:
        return {metric: delta for metric, delta in self.deltas.items() if delta < -self.max_drop}

    @property
    def passed(self) -> bool:
        return bool(self.deltas) and not self.drops and not self.missing

    @property
    def failures(self) -> list[str]:
        """The reasons it failed. A drop reads as gate_reports.lm_eval_failures words it from a
        gate_lm_eval report, so the planner shows the same reason wherever the verdict came from."""
        found = []
        if self.drops:
            listed = ", ".join(f"{metric} {delta:+.3f}" for metric, delta in self.drops.items())
            found.append(f"lm-eval: {listed} against the baseline (max drop {self.max_drop})")
        if self.missing:
            found.append(f"lm-eval: {', '.join(self.missing)} missing from the model's scores")
        if not self.deltas and not self.missing:
            found.append("lm-eval: the baseline has no scores to compare with")
        return found


def judge(candidate: Scores, baseline: Scores, max_drop: float) -> LmEvalVerdict:
    """The candidate's scores against the baseline's, metric by metric, in the baseline's order.

    Deltas are rounded first so that a drop of exactly ``max_drop`` (0.45 against 0.5) passes
    whatever the float subtraction leaves in the last bits."""
    if max_drop < 0:
        raise ValueError(f"the maximum lm-eval score drop must be >= 0, not {max_drop}")
    deltas: dict[str, float] = {}
    missing: list[str] = []
    for task, metrics in baseline.items():
        for metric, base in metrics.items():
            value = candidate.get(task, {}).get(metric)
            if value is None:
                missing.append(f"{task}/{metric}")
            else:
                deltas[f"{task}/{metric}"] = round(value - base, DELTA_DIGITS)
    return LmEvalVerdict(deltas, max_drop, missing)
