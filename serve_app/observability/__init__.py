"""Metrics, dashboards and their tooling. Importing this package imports neither Ray nor vLLM."""

from serve_app.observability.backends import (
    InMemoryMetricsBackend,
    MetricsBackend,
    NullMetricsBackend,
    RayMetricsBackend,
)
from serve_app.observability.metrics import METRICS, MetricKind, MetricSpec
from serve_app.observability.recorder import ServeAppMetrics, StreamTimer

__all__ = [
    "METRICS",
    "InMemoryMetricsBackend",
    "MetricKind",
    "MetricSpec",
    "MetricsBackend",
    "NullMetricsBackend",
    "RayMetricsBackend",
    "ServeAppMetrics",
    "StreamTimer",
]
