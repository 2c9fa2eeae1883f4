"""A small typed model of Grafana dashboards and its JSON form (schemaVersion 39, Grafana 10+).

Only what serve_app's dashboards use: time series and stat panels over one Prometheus data
source chosen by the ``datasource`` variable, query variables, and a left-to-right grid layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

SCHEMA_VERSION = 39
GRID_WIDTH = 24
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
DASHBOARD_TAG = "serve-app"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    unit: str  # a Grafana unit id: "s", "reqps", "percentunit", "bytes", "short", ...
    queries: tuple[Query, ...]
    kind: Literal["timeseries", "stat"] = "timeseries"
    width: int = 12
    height: int = 8
    max_value: float | None = None


@dataclass(frozen=True)
class Variable:
    """A multi-value query variable, e.g. ``model`` from ``label_values(..., model)``."""

    name: str
    label: str
    query: str


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]
    variables: tuple[Variable, ...] = ()
    tags: tuple[str, ...] = field(default=(DASHBOARD_TAG,))


def _targets(panel: Panel) -> list[dict[str, Any]]:
    return [
        {
            "datasource": DATASOURCE_REF,
            "expr": q.expr,
            "legendFormat": q.legend,
            "range": True,
            "refId": chr(ord("A") + i),
        }
        for i, q in enumerate(panel.queries)
    ]


def _field_config(panel: Panel) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit, "min": 0}
    if panel.max_value is not None:
        defaults["max"] = panel.max_value
    if panel.kind == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "fillOpacity": 10, "lineWidth": 1, "showPoints": "never"}
    return {"defaults": defaults, "overrides": []}


def _options(panel: Panel) -> dict[str, Any]:
    if panel.kind == "stat":
        return {
            "colorMode": "value",
            "graphMode": "area",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "auto",
        }
    return {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }


def layout(panels: tuple[Panel, ...]) -> list[dict[str, int]]:
    """Grid positions filling rows left to right; a panel that does not fit starts a new row."""
    positions = []
    x = y = row_height = 0
    for panel in panels:
        if x + panel.width > GRID_WIDTH:
            x, y, row_height = 0, y + row_height, 0
        positions.append({"h": panel.height, "w": panel.width, "x": x, "y": y})
        x += panel.width
        row_height = max(row_height, panel.height)
    return positions


def panel_json(panel: Panel, panel_id: int, grid_pos: dict[str, int]) -> dict[str, Any]:
    return {
        "datasource": DATASOURCE_REF,
        "description": panel.description,
        "fieldConfig": _field_config(panel),
        "gridPos": grid_pos,
        "id": panel_id,
        "options": _options(panel),
        "targets": _targets(panel),
        "title": panel.title,
        "type": panel.kind,
    }


def _variable_json(variable: Variable) -> dict[str, Any]:
    return {
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "datasource": DATASOURCE_REF,
        "definition": variable.query,
        "includeAll": True,
        "label": variable.label,
        "multi": True,
        "name": variable.name,
        "query": {"query": variable.query, "refId": variable.name},
        "refresh": 2,
        "sort": 1,
        "type": "query",
    }


def _datasource_variable() -> dict[str, Any]:
    return {"current": {}, "label": "Data source", "name": "datasource", "query": "prometheus", "type": "datasource"}


def dashboard_json(dashboard: Dashboard) -> dict[str, Any]:
    """The dashboard model as Grafana stores it (no ``id``: Grafana assigns one)."""
    panels = zip(dashboard.panels, layout(dashboard.panels), strict=True)
    return {
        "annotations": {"list": []},
        "description": dashboard.description,
        "editable": True,
        "graphTooltip": 1,
        "links": [
            {"asDropdown": True, "includeVars": True, "keepTime": True, "tags": [DASHBOARD_TAG], "type": "dashboards"}
        ],
        "panels": [panel_json(panel, i + 1, pos) for i, (panel, pos) in enumerate(panels)],
        "refresh": "10s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": list(dashboard.tags),
        "templating": {"list": [_datasource_variable(), *(_variable_json(v) for v in dashboard.variables)]},
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "browser",
        "title": dashboard.title,
        "uid": dashboard.uid,
        "version": 1,
    }
