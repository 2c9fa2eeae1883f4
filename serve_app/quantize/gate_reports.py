"""Gate verdicts per variant, as the goal planner reads them (stdlib only).

A gate report is the ``evaluation_report.json`` that ``serve-app evaluate`` writes
(:func:`serve_app.quantize.evaluate.compare`): ``passed``, ``failures`` and ``model.path``, the
checkpoint it judged. The planner finds one per variant id in a folder, either as
``DIR/<variant>.json`` or as ``DIR/<variant>/evaluation_report.json``.

The same folder may hold ``lm-eval.json``, the report of ``benchmarks/gpu/gate_lm_eval.py``: the
project's lm-eval tasks through the OpenAI API per variant, with a verdict for each variant against
the baseline (``verdicts.<variant>.passed`` and ``deltas``). A variant with a verdict there passes
only if both reports pass; a variant it scored but could not judge (an ``error``) fails. Gate runs
made at different times (one for FP8, a later one for W8A8) each write such a report: the folder
may hold several, ``lm-eval.json`` and ``lm-eval-<name>.json``, and a variant must pass every one
that judges it.

The planner does not re-check the report's checkpoint fingerprint: the checkpoint may live on
another machine. The deployment gate (serve_app.quantize.gate) still checks it when a replica
loads the checkpoint, so a stale verdict stops the deployment rather than the plan.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_app.quantize.report import EVAL_REPORT
from serve_app.quantize.variants import Variant

NO_PASSING_REPORT = "no passing gate report"
LM_EVAL_REPORTS = ("lm-eval.json", "lm-eval-*.json")


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    origin: str  # the file it came from
    checkpoint: str | None = None  # the folder it judged (model.path)
    failures: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        if self.passed:
            return f"gate passed ({self.origin})"
        return f"{NO_PASSING_REPORT}: failed ({'; '.join(self.failures) or 'no reason recorded'}) in {self.origin}"


def verdict_from_report(report: Mapping[str, Any], origin: str) -> GateVerdict:
    model = report.get("model")
    path = model.get("path") if isinstance(model, Mapping) else None
    return GateVerdict(
        passed=report.get("passed") is True,
        origin=origin,
        checkpoint=path if isinstance(path, str) and path else None,
        failures=tuple(str(f) for f in report.get("failures") or ()),
    )


def _report_file(folder: Path, variant_id: str) -> Path | None:
    for candidate in (folder / f"{variant_id}.json", folder / variant_id / EVAL_REPORT):
        if candidate.is_file():
            return candidate
    return None


def lm_eval_failures(report: Mapping[str, Any], variant_id: str) -> tuple[str, ...] | None:
    """What the lm-eval report holds against ``variant_id``: None when it says nothing about it,
    () when its verdict passed, else the reasons (each score that fell too far, or the error)."""
    verdict = (report.get("verdicts") or {}).get(variant_id)
    scored = (report.get("variants") or {}).get(variant_id)
    if verdict is None:
        if isinstance(scored, Mapping) and scored.get("error"):
            return (f"lm-eval: {scored['error']}",)
        return None
    if verdict.get("passed") is True:
        return ()
    limit = report.get("max_score_drop")
    drops = [
        f"{metric} {delta:+.3f}" for metric, delta in (verdict.get("deltas") or {}).items() if delta < -(limit or 0)
    ]
    return (f"lm-eval: {', '.join(drops) or 'failed'} against the baseline (max drop {limit})",)


def _with_lm_eval(verdict: GateVerdict, failures: tuple[str, ...], origin: str) -> GateVerdict:
    return GateVerdict(
        passed=verdict.passed and not failures,
        origin=f"{verdict.origin} + {origin}",
        checkpoint=verdict.checkpoint,
        failures=verdict.failures + failures,
    )


def read_gate_reports(folder: Path, variant_ids: list[str]) -> dict[str, GateVerdict]:
    """The verdict of each variant that has a report in ``folder`` (and, where an lm-eval report
    judges it, that verdict too); an unreadable report counts as a failing one, so a broken file
    never lets a variant through."""
    verdicts = _read_evaluate_reports(folder, variant_ids)
    for lm_eval in sorted({path for pattern in LM_EVAL_REPORTS for path in folder.glob(pattern)}):
        verdicts = _judged_by_lm_eval(verdicts, lm_eval)
    return verdicts


def _judged_by_lm_eval(verdicts: dict[str, GateVerdict], lm_eval: Path) -> dict[str, GateVerdict]:
    try:
        report = json.loads(lm_eval.read_text(encoding="utf-8"))
        if not isinstance(report, dict):
            raise ValueError("expected a JSON object")
    except (OSError, ValueError) as err:
        unreadable = (f"lm-eval report unreadable: {err}",)
        return {v: _with_lm_eval(verdict, unreadable, str(lm_eval)) for v, verdict in verdicts.items()}
    judged = dict(verdicts)
    for variant_id, verdict in verdicts.items():
        failures = lm_eval_failures(report, variant_id)
        if failures is not None:
            judged[variant_id] = _with_lm_eval(verdict, failures, str(lm_eval))
    return judged


def _read_evaluate_reports(folder: Path, variant_ids: list[str]) -> dict[str, GateVerdict]:
    verdicts = {}
    for variant_id in variant_ids:
        path = _report_file(folder, variant_id)
        if path is None:
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object")
        except (OSError, ValueError) as err:
            verdicts[variant_id] = GateVerdict(False, str(path), failures=(f"unreadable: {err}",))
            continue
        verdicts[variant_id] = verdict_from_report(data, str(path))
    return verdicts


def gate_reason(variant: Variant, verdicts: Mapping[str, GateVerdict]) -> tuple[bool, str]:
    """(kept, reason). The unquantized baseline needs no report: it is what the gate compares against."""
    verdict = verdicts.get(variant.id)
    if variant.is_baseline:
        return True, "the unquantized baseline: the gate compares every other variant against it"
    if verdict is None:
        return False, f"{NO_PASSING_REPORT}: none for {variant.id!r}"
    return verdict.passed, verdict.reason
