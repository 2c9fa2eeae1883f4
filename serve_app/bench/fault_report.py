"""The fault report: one row per scenario, as a printed table, Markdown and JSON (pure rendering)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from serve_app.bench.ledger import ScenarioSummary

_COLUMNS = (
    "scenario",
    "sent",
    "succeeded",
    "clear errors",
    "cut by client",
    "lost",
    "p99 during fault (s)",
    "recovery (s)",
)


def _cell(value: float | int | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _row(s: ScenarioSummary) -> list[str]:
    values = (s.sent, s.succeeded, s.clear_errors, s.cut_by_client, s.lost, s.p99_latency_during_fault_s, s.recovery_s)
    return [s.scenario, *(_cell(v) for v in values)]


def markdown_table(summaries: Sequence[ScenarioSummary]) -> str:
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "|".join(["---"] + ["---:"] * (len(_COLUMNS) - 1)) + "|"]
    lines += ["| " + " | ".join(_row(s)) + " |" for s in summaries]
    return "\n".join(lines)


def text_table(summaries: Sequence[ScenarioSummary]) -> str:
    rows = [list(_COLUMNS), *(_row(s) for s in summaries)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    return "\n".join(lines)


def checks_markdown(summaries: Sequence[ScenarioSummary]) -> str:
    """Each scenario's outcome breakdown and its own measurements (bounds, detection times...)."""
    parts = []
    for s in summaries:
        outcomes = ", ".join(f"{k} {v}" for k, v in s.outcomes.items()) or "none"
        checks = "; ".join(f"{k} = {v}" for k, v in s.checks.items()) or "none"
        parts.append(f"- **{s.scenario}**: outcomes: {outcomes}. Checks: {checks}.")
    return "\n".join(parts)


def write_fault_report(summaries: Sequence[ScenarioSummary], out_dir: Path, context: dict[str, Any]) -> None:
    """``faults.json`` (every field) and ``faults.md`` (the table and the checks) under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"context": context, "scenarios": [s.as_json() for s in summaries]}
    (out_dir / "faults.json").write_text(json.dumps(data, indent=2) + "\n")
    header = "\n".join(f"- {k}: {v}" for k, v in context.items())
    body = f"# Fault scenarios\n\n{header}\n\n{markdown_table(summaries)}\n\n{checks_markdown(summaries)}\n"
    (out_dir / "faults.md").write_text(body)
