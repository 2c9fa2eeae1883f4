"""Gate verdicts per variant, as the goal planner reads them (stdlib only).

A gate report is the ``evaluation_report.json`` that ``serve-app evaluate`` writes
(:func:`serve_app.quantize.evaluate.compare`): ``passed``, ``failures`` and ``model.path``, the
checkpoint it judged. The planner finds one per variant id in a folder, either as
``DIR/<variant>.json`` or as ``DIR/<variant>/evaluation_report.json``.

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


def read_gate_reports(folder: Path, variant_ids: list[str]) -> dict[str, GateVerdict]:
    """The verdict of each variant that has a report in ``folder``; an unreadable report counts
    as a failing one, so a broken file never lets a variant through."""
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
