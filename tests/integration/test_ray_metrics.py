"""The metrics as Ray exports them: each spec through Ray's own metric classes, and the series names
Ray's metrics agent exposes against the names the dashboards query. In this tier because it imports
Ray; the specs and the recorder are unit-tested in tests/unit/test_metrics.py."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from serve_app.observability import metrics as m
from serve_app.observability.backends import RayMetricsBackend
from serve_app.observability.metrics import METRICS
from serve_app.observability.recorder import ServeAppMetrics


def test_exported_names_match_what_rays_metrics_agent_exposes() -> None:
    """Feed every spec through Ray's own Prometheus exporter (the dashboard agent's recorder) and
    compare the series names it exposes with the names the dashboards query. Runs in a subprocess
    because the recorder installs a process-wide OpenTelemetry meter provider."""
    specs = [{"name": s.name, "kind": str(s.kind), "buckets": list(s.buckets), "tags": s.tag_keys} for s in METRICS]
    script = textwrap.dedent(
        """
        import json, sys
        from prometheus_client import REGISTRY, generate_latest
        from prometheus_client.parser import text_string_to_metric_families
        from ray._private.telemetry.open_telemetry_metric_recorder import OpenTelemetryMetricRecorder

        recorder = OpenTelemetryMetricRecorder(gauge_metric_ttl_seconds=600)
        for spec in json.load(sys.stdin):
            register = {"counter": recorder.register_counter_metric, "gauge": recorder.register_gauge_metric}
            if spec["kind"] == "histogram":
                recorder.register_histogram_metric(spec["name"], "d", spec["buckets"])
            else:
                register[spec["kind"]](spec["name"], "d")
            recorder.set_metric_value(spec["name"], {t: "x" for t in spec["tags"]}, 1.0)
        text = generate_latest(REGISTRY).decode()
        print(json.dumps(sorted({s.name for f in text_string_to_metric_families(text) for s in f.samples})))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps(specs), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    exposed = {name for name in json.loads(done.stdout.splitlines()[-1]) if name.startswith("ray_serve_app_")}
    assert exposed == m.exported_series_names()


def test_ray_backend_creates_each_ray_metric_once_with_the_spec() -> None:
    from ray.util import metrics as ray_metrics

    backend = RayMetricsBackend()
    recorder = ServeAppMetrics(backend)
    recorder.request_finished("/generate", "m", 200, 0.5)  # no cluster: Ray drops the records
    recorder.router_queue("r1", 3, 300)
    histogram = backend.instrument(m.REQUEST_LATENCY)
    assert isinstance(histogram, ray_metrics.Histogram)
    assert histogram.info["boundaries"] == list(m.E2E_BUCKETS)
    assert histogram.info["tag_keys"] == ("route", "model", "status_class")
    assert isinstance(backend.instrument(m.REQUESTS), ray_metrics.Counter)
    assert isinstance(backend.instrument(m.ROUTER_QUEUE_DEPTH), ray_metrics.Gauge)
    assert backend.instrument(m.REQUESTS) is backend.instrument(m.REQUESTS)
