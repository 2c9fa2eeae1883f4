"""Where recorded values go: Ray's metrics (production), memory (tests, benchmarks), or nowhere.

A backend receives already-validated values and tags (see :class:`~serve_app.observability.recorder.ServeAppMetrics`);
it never decides what a metric means.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Mapping
from typing import Any, Protocol

from serve_app.observability.metrics import MetricKind, MetricSpec

TagItems = tuple[tuple[str, str], ...]


class MetricsBackend(Protocol):
    def increment(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None: ...

    def set(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None: ...

    def observe(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None: ...


class NullMetricsBackend:
    """Drops everything: for code paths that run without metrics (scripts, some tests)."""

    def increment(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None:
        return None

    def set(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None:
        return None

    def observe(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None:
        return None


def _key(tags: Mapping[str, str]) -> TagItems:
    return tuple(sorted(tags.items()))


class InMemoryMetricsBackend:
    """Keeps every value in dictionaries; read back with :meth:`counter`, :meth:`gauge` and :meth:`observations`."""

    def __init__(self) -> None:
        self.counters: dict[tuple[str, TagItems], float] = defaultdict(float)
        self.gauges: dict[tuple[str, TagItems], float] = {}
        self.histograms: dict[tuple[str, TagItems], list[float]] = defaultdict(list)

    def increment(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None:
        self.counters[(spec.name, _key(tags))] += value

    def set(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None:
        self.gauges[(spec.name, _key(tags))] = value

    def observe(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None:
        self.histograms[(spec.name, _key(tags))].append(value)

    def counter(self, name: str, **tags: str) -> float:
        """The counter's value for exactly these tags (0.0 when never incremented)."""
        return self.counters.get((name, _key(tags)), 0.0)

    def gauge(self, name: str, **tags: str) -> float | None:
        return self.gauges.get((name, _key(tags)))

    def observations(self, name: str, **tags: str) -> list[float]:
        return list(self.histograms.get((name, _key(tags)), []))

    def recorded_names(self) -> frozenset[str]:
        return frozenset(name for store in (self.counters, self.gauges, self.histograms) for name, _ in store)


class RayMetricsBackend:
    """Records through ``ray.util.metrics``; each metric object is created on first use.

    Create one per process (router, replica, controller-side policy): Ray metric objects belong
    to the worker that made them. Without a running Ray worker the records are dropped by Ray.
    """

    def __init__(self) -> None:
        self._instruments: dict[str, Any] = {}
        # Replicas record from Ray's threads (autoscaling stats) and the event loop alike.
        self._lock = threading.Lock()

    def increment(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None:
        self.instrument(spec).inc(value, tags=dict(tags))

    def set(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None:
        self.instrument(spec).set(value, tags=dict(tags))

    def observe(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None:
        self.instrument(spec).observe(value, tags=dict(tags))

    def instrument(self, spec: MetricSpec) -> Any:
        """The ``ray.util.metrics`` object for ``spec``, created on first call."""
        existing = self._instruments.get(spec.name)
        if existing is not None:
            return existing
        with self._lock:
            if spec.name not in self._instruments:
                self._instruments[spec.name] = _make_ray_metric(spec)
            return self._instruments[spec.name]


def _make_ray_metric(spec: MetricSpec) -> Any:
    # Imported here so that importing serve_app.observability never imports Ray.
    from ray.util import metrics as ray_metrics

    if spec.kind is MetricKind.COUNTER:
        return ray_metrics.Counter(spec.name, description=spec.description, tag_keys=spec.tag_keys)
    if spec.kind is MetricKind.GAUGE:
        return ray_metrics.Gauge(spec.name, description=spec.description, tag_keys=spec.tag_keys)
    return ray_metrics.Histogram(
        spec.name, description=spec.description, boundaries=list(spec.buckets), tag_keys=spec.tag_keys
    )
