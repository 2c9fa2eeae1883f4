"""A PNG of the main dashboard panels from a Prometheus server (for reports and CI artifacts).

The panels and their PromQL come from the dashboards themselves; Grafana variables are
replaced (all models and deployments, a fixed rate window) before querying ``/api/v1/query_range``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from serve_app.observability.dashboards import all_dashboards
from serve_app.observability.grafana_json import Panel

# (dashboard uid, panel title) of the panels worth a glance in a report, in display order.
MAIN_PANELS = (
    ("serve-app-overview", "Requests/s by status"),
    ("serve-app-overview", "Error ratio"),
    ("serve-app-overview", "End-to-end latency (2xx)"),
    ("serve-app-overview", "Time to first token"),
    ("serve-app-overview", "Time per output token"),
    ("serve-app-overview", "Tokens/s"),
    ("serve-app-router", "Queue depth"),
    ("serve-app-router", "Rejections/s by reason"),
    ("serve-app-engine", "KV-cache usage"),
    ("serve-app-autoscaling", "Replicas: running, desired, target"),
)
_LEGEND_RE = re.compile(r"\{\{\s*(\w+)\s*\}\}")
# Axis labels for the Grafana unit ids the dashboards use.
_AXIS_LABELS = {"s": "seconds", "reqps": "requests/s", "percentunit": "ratio", "bytes": "bytes", "short": ""}


@dataclass(frozen=True)
class Series:
    label: str
    timestamps: tuple[float, ...]
    values: tuple[float, ...]


def main_panels() -> list[Panel]:
    by_key = {(d.uid, p.title): p for d in all_dashboards() for p in d.panels}
    return [by_key[key] for key in MAIN_PANELS]


def substitute_variables(expr: str, rate_window_s: int) -> str:
    """PromQL runnable outside Grafana: every model and deployment, a fixed rate window."""
    expr = expr.replace("$__rate_interval", f"{rate_window_s}s")
    return re.sub(r"\$(model|deployment)\b", ".*", expr)


def format_legend(template: str, labels: Mapping[str, str]) -> str:
    """Grafana's ``{{label}}`` legend syntax; a label the series lacks renders empty."""
    text = _LEGEND_RE.sub(lambda match: labels.get(match.group(1), ""), template).strip()
    return text or "value"


def parse_matrix(payload: Mapping[str, Any], legend: str) -> list[Series]:
    """Series of a ``query_range`` answer; raises ValueError on an error answer or non-matrix result."""
    if payload.get("status") != "success":
        raise ValueError(f"Prometheus error: {payload.get('errorType', '?')}: {payload.get('error', payload)}")
    data = payload.get("data") or {}
    if data.get("resultType") != "matrix":
        raise ValueError(f"expected a matrix result, got {data.get('resultType')!r}")
    series = []
    for item in data.get("result", []):
        points = [(float(ts), float(value)) for ts, value in item.get("values", [])]
        series.append(
            Series(
                label=format_legend(legend, item.get("metric", {})),
                timestamps=tuple(ts for ts, _ in points),
                values=tuple(v for _, v in points),
            )
        )
    return sorted(series, key=lambda s: s.label)


def query_range(
    client: httpx.Client, prometheus_url: str, expr: str, start: float, end: float, step_s: float
) -> dict[str, Any]:
    response = client.get(
        f"{prometheus_url.rstrip('/')}/api/v1/query_range",
        params={"query": expr, "start": start, "end": end, "step": step_s},
    )
    # Prometheus answers bad queries with 400 and a JSON error body: let parse_matrix word it.
    if response.status_code not in (200, 400, 422):
        response.raise_for_status()
    payload: dict[str, Any] = response.json()
    return payload


def fetch_panel_series(
    client: httpx.Client, prometheus_url: str, panel: Panel, start: float, end: float, step_s: float, window_s: int
) -> list[Series]:
    series: list[Series] = []
    for query in panel.queries:
        expr = substitute_variables(query.expr, window_s)
        series.extend(parse_matrix(query_range(client, prometheus_url, expr, start, end, step_s), query.legend))
    return series


def grid_shape(count: int, columns: int = 2) -> tuple[int, int]:
    """(rows, columns) of a subplot grid holding ``count`` panels."""
    if count < 1:
        raise ValueError("nothing to render")
    columns = min(columns, count)
    return math.ceil(count / columns), columns


def render_png(panels: Sequence[tuple[Panel, Sequence[Series]]], out_path: Path, title: str) -> Path:
    """Draw each panel's series on its own axes; a panel without data says so instead of staying blank."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot's import
    import matplotlib.pyplot as plt

    rows, columns = grid_shape(len(panels))
    fig, axes = plt.subplots(rows, columns, figsize=(7 * columns, 3.2 * rows), squeeze=False)
    start = min((s.timestamps[0] for _, series in panels for s in series if s.timestamps), default=0.0)
    for ax, (panel, series) in zip(axes.flat, panels, strict=False):
        ax.set_title(panel.title, fontsize=10)
        ax.set_ylabel(_AXIS_LABELS.get(panel.unit, panel.unit), fontsize=8)
        ax.set_xlabel("minutes", fontsize=8)
        ax.grid(alpha=0.3)
        for s in series:
            ax.plot([(t - start) / 60 for t in s.timestamps], s.values, label=s.label, linewidth=1.2)
        if series:
            ax.legend(fontsize=7, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def render_from_prometheus(
    prometheus_url: str, out_path: Path, start: float, end: float, step_s: float = 15.0, window_s: int = 60
) -> Path:
    """Query every main panel over ``[start, end]`` (unix seconds) and write the PNG."""
    if end <= start or step_s <= 0:
        raise ValueError("need start < end and a positive step")
    with httpx.Client(timeout=30.0) as client:
        panels = [
            (panel, fetch_panel_series(client, prometheus_url, panel, start, end, step_s, window_s))
            for panel in main_panels()
        ]
    return render_png(panels, out_path, f"serve-app metrics ({(end - start) / 60:.0f} min)")
