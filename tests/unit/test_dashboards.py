from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import promql_parser
import pytest
import yaml
from PIL import Image

from serve_app.cli import main as cli_main
from serve_app.observability.dashboards import all_dashboards
from serve_app.observability.docs import render_metrics_doc
from serve_app.observability.grafana_json import GRID_WIDTH, dashboard_json
from serve_app.observability.metrics import METRICS, MetricSpec
from serve_app.observability.provisioning import RAY_SERVICE_DISCOVERY_FILE, generated_files, stale_generated
from serve_app.observability.render import (
    MAIN_PANELS,
    format_legend,
    grid_shape,
    main_panels,
    parse_matrix,
    render_from_prometheus,
    substitute_variables,
)

REPO = Path(__file__).resolve().parents[2]
SPEC_BY_SERIES: dict[str, MetricSpec] = {series: spec for spec in METRICS for series in spec.exported_series}
DASHBOARDS = [dashboard_json(d) for d in all_dashboards()]


def selectors(node: Any) -> Iterator[Any]:
    """Every vector selector in a parsed PromQL expression."""
    if isinstance(node, promql_parser.VectorSelector):
        yield node
    elif isinstance(node, promql_parser.MatrixSelector):
        yield node.vector_selector
    for child_name in ("lhs", "rhs", "expr", "param"):
        child = getattr(node, child_name, None)
        if child is not None:
            yield from selectors(child)
    for arg in getattr(node, "args", None) or ():
        yield from selectors(arg)


def aggregations(node: Any) -> Iterator[tuple[list[str], list[Any]]]:
    """(``by`` labels, selectors below) of every aggregation in the expression."""
    if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
        yield list(node.modifier.labels), list(selectors(node.expr))
    for child_name in ("lhs", "rhs", "expr", "param"):
        child = getattr(node, child_name, None)
        if child is not None:
            yield from aggregations(child)
    for arg in getattr(node, "args", None) or ():
        yield from aggregations(arg)


def panel_queries() -> list[tuple[str, str, str]]:
    return [(d["uid"], p["title"], t["expr"]) for d in DASHBOARDS for p in d["panels"] for t in p["targets"]]


def labels_of(series: str) -> set[str]:
    """Labels a serve_app series carries (histogram buckets add ``le``); none for an unknown series."""
    spec = SPEC_BY_SERIES.get(series)
    if spec is None:
        return set()
    return {*spec.tag_keys, "le"} if series.endswith("_bucket") else set(spec.tag_keys)


def check_query(expr: str) -> list[str]:
    """Problems of one dashboard query: syntax, unknown metrics, labels the metric does not carry."""
    try:
        ast = promql_parser.parse(substitute_variables(expr, 60))
    except ValueError as err:
        return [f"syntax: {err}"]
    problems = []
    for selector in selectors(ast):
        if selector.name not in SPEC_BY_SERIES:
            problems.append(f"unknown metric {selector.name!r}")
        matcher_names = [x.name for x in selector.matchers.matchers]
        problems += [f"{selector.name} has no label {n!r}" for n in matcher_names if n not in labels_of(selector.name)]
    for labels, under in aggregations(ast):
        for selector in under:
            problems += [f"sum by {x!r} over {selector.name}" for x in labels if x not in labels_of(selector.name)]
    return problems


def test_committed_dashboard_files_are_generated_output() -> None:
    assert stale_generated(REPO / "dashboards") == [], "run `serve-app dashboards generate` and commit the result"


def test_committed_metrics_doc_is_generated_output() -> None:
    assert (REPO / "docs/metrics.md").read_text() == render_metrics_doc(), "run `serve-app dashboards docs`"


@pytest.mark.parametrize(("uid", "title", "expr"), panel_queries())
def test_panel_query_parses_and_uses_only_spec_metrics_and_labels(uid: str, title: str, expr: str) -> None:
    assert check_query(expr) == []


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ('sum(rate(ray_serve_app_request_total{model=~"$model"}[$__rate_interval]))', "unknown metric"),
        ("sum(ray_serve_app_requests_total) + up", "unknown metric 'up'"),
        ('sum(ray_serve_app_router_queue_depth{model="m"})', "has no label 'model'"),
        ("sum by (model) (ray_serve_app_router_queue_depth)", "sum by 'model'"),
        ("sum(rate(ray_serve_app_requests_total[5m])", "syntax"),
    ],
)
def test_query_checker_catches_bad_queries(expr: str, problem: str) -> None:
    assert any(problem in p for p in check_query(expr)), check_query(expr)


def test_variable_queries_name_spec_metrics_and_labels() -> None:
    for dashboard in DASHBOARDS:
        for variable in dashboard["templating"]["list"]:
            if variable["type"] != "query":
                continue
            series, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["query"]["query"]).groups()
            assert label in SPEC_BY_SERIES[series].tag_keys
            # a panel filtering on $var needs the variable defined; a defined variable is used
            assert any(f"${variable['name']}" in expr for uid, _, expr in panel_queries() if uid == dashboard["uid"])


def test_every_metric_is_on_some_dashboard() -> None:
    used = {
        s.name for _, _, expr in panel_queries() for s in selectors(promql_parser.parse(substitute_variables(expr, 60)))
    }
    missing = [spec.name for spec in METRICS if not used & set(spec.exported_series)]
    assert missing == []


def test_required_panels_exist() -> None:
    titles = {d["uid"]: {p["title"] for p in d["panels"]} for d in DASHBOARDS}
    assert {"Requests/s", "Error ratio", "End-to-end latency (2xx)", "Time to first token"} <= titles[
        "serve-app-overview"
    ]
    assert {"Time per output token", "Inter-token latency"} <= titles["serve-app-overview"]
    assert {"Batch size", "Queue depth", "Queue wait", "Rejections/s by reason"} <= titles["serve-app-router"]
    assert {"Tenant requests/s by outcome", "Tenant tokens/s", "Admission queue by class"} <= titles["serve-app-router"]
    assert {"KV-cache usage", "Running sequences", "Waiting sequences"} <= titles["serve-app-engine"]
    assert {"Prefix-cache hit rate", "Generated tokens/s by model"} <= titles["serve-app-engine"]
    assert {"Replicas: running, desired, target", "Decisions/s by reason"} <= titles["serve-app-autoscaling"]


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda d: d["uid"])
def test_layout_ids_and_refs_are_consistent(dashboard: dict[str, Any]) -> None:
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= GRID_WIDTH
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert len(dashboard["uid"]) <= 40 and "id" not in dashboard


def test_provisioning_files_point_at_each_other_and_at_ray() -> None:
    files = generated_files()
    prometheus = yaml.safe_load(files["prometheus.yml"])
    (job,) = prometheus["scrape_configs"]
    assert job["file_sd_configs"] == [{"files": [RAY_SERVICE_DISCOVERY_FILE]}]
    assert RAY_SERVICE_DISCOVERY_FILE == "/tmp/ray/prom_metrics_service_discovery.json"
    (datasource,) = yaml.safe_load(files["provisioning/datasources.yaml"])["datasources"]
    assert datasource["type"] == "prometheus" and datasource["isDefault"] is True
    assert datasource["jsonData"]["timeInterval"] == prometheus["global"]["scrape_interval"]
    (provider,) = yaml.safe_load(files["provisioning/dashboards.yaml"])["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    assert sorted(name for name in files if name.endswith(".json")) == sorted(f"{d['uid']}.json" for d in DASHBOARDS)


def test_generate_and_check_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dash"
    assert cli_main(["dashboards", "generate", "--out", str(out)]) == 0
    assert cli_main(["dashboards", "generate", "--out", str(out), "--check"]) == 0
    overview = out / "serve-app-overview.json"
    overview.write_text(json.dumps({**json.loads(overview.read_text()), "title": "edited by hand"}))
    (out / "serve-app-old-name.json").write_text("{}")
    assert cli_main(["dashboards", "generate", "--out", str(out), "--check"]) == 1
    err = capsys.readouterr().err
    assert "serve-app-overview.json" in err and "serve-app-old-name.json" in err


def test_docs_through_the_cli(tmp_path: Path) -> None:
    doc = tmp_path / "metrics.md"
    assert cli_main(["dashboards", "docs", "--out", str(doc), "--check"]) == 1
    assert cli_main(["dashboards", "docs", "--out", str(doc)]) == 0
    assert cli_main(["dashboards", "docs", "--out", str(doc), "--check"]) == 0
    text = doc.read_text()
    for spec in METRICS:
        assert f"`{spec.name}`" in text and spec.exported_name in text


# -- render.py --------------------------------------------------------------------------------


def matrix(*series: tuple[dict[str, str], list[tuple[float, str]]]) -> dict[str, Any]:
    result = [{"metric": labels, "values": [[ts, v] for ts, v in points]} for labels, points in series]
    return {"status": "success", "data": {"resultType": "matrix", "result": result}}


def test_substitute_variables_leaves_plain_promql() -> None:
    expr = 'sum by (status) (rate(x_total{model=~"$model", deployment=~"$deployment"}[$__rate_interval]))'
    assert substitute_variables(expr, 90) == 'sum by (status) (rate(x_total{model=~".*", deployment=~".*"}[90s]))'


def test_parse_matrix_formats_legends_and_keeps_nan() -> None:
    payload = matrix(
        ({"status": "500"}, [(10.0, "1"), (25.0, "NaN")]),
        ({"status": "200"}, [(10.0, "3.5"), (25.0, "4")]),
    )
    first, second = parse_matrix(payload, "HTTP {{status}}")
    assert (first.label, first.timestamps, first.values) == ("HTTP 200", (10.0, 25.0), (3.5, 4.0))
    assert second.label == "HTTP 500" and math.isnan(second.values[1])
    assert format_legend("{{ replica }} {{gpu}}", {"replica": "r1"}) == "r1"
    assert format_legend("{{gpu}}", {}) == "value"


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ({"status": "error", "errorType": "bad_data", "error": "parse error"}, "bad_data: parse error"),
        ({"status": "success", "data": {"resultType": "vector", "result": []}}, "matrix"),
    ],
)
def test_parse_matrix_rejects_errors(payload: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_matrix(payload, "x")


def test_grid_shape() -> None:
    assert [grid_shape(n) for n in (1, 2, 3, 10)] == [(1, 1), (1, 2), (2, 2), (5, 2)]
    with pytest.raises(ValueError):
        grid_shape(0)


class FakePrometheus(BaseHTTPRequestHandler):
    """``/api/v1/query_range`` answering a ramp for every query except rejections (none: no data)."""

    queries: list[dict[str, str]] = []

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        params = {k: v[0] for k, v in parse_qs(url.query).items()}
        type(self).queries.append(params)
        start, step = float(params["start"]), float(params["step"])
        points = [(start + i * step, str(i)) for i in range(5)]
        payload = matrix() if "rejections" in params["query"] else matrix(({"model": "m"}, points))
        body = json.dumps(payload).encode()
        self.send_response(200 if url.path == "/api/v1/query_range" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None


def test_render_from_prometheus_queries_every_main_panel(tmp_path: Path) -> None:
    FakePrometheus.queries = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakePrometheus)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        out = render_from_prometheus(url, tmp_path / "m.png", start=1000.0, end=1600.0, step_s=30.0, window_s=120)
    finally:
        server.shutdown()
        server.server_close()
    expected = [substitute_variables(q.expr, 120) for panel in main_panels() for q in panel.queries]
    assert [q["query"] for q in FakePrometheus.queries] == expected
    assert all("$" not in q["query"] for q in FakePrometheus.queries)
    assert {(q["start"], q["end"], q["step"]) for q in FakePrometheus.queries} == {("1000.0", "1600.0", "30.0")}
    with Image.open(out) as image:
        assert image.format == "PNG"
        rows, columns = grid_shape(len(MAIN_PANELS))
        assert image.size == (700 * columns, 320 * rows)
