"""PromQL built from metric specs, so a dashboard can only name metrics that exist.

Grafana variables: ``$model`` and ``$deployment`` (multi-value regexes), ``$__rate_interval``.
"""

from __future__ import annotations

from serve_app.observability.metrics import MetricKind, MetricSpec

RATE_WINDOW = "$__rate_interval"
# Template variables a spec's tags are filtered by, when the spec has that tag.
VARIABLE_FILTERS = {"model": "$model", "deployment": "$deployment"}


def selector(series: str, spec: MetricSpec, matchers: str = "") -> str:
    """``series{tag=~"$var",...,matchers}`` with a filter for each dashboard variable the spec carries."""
    parts = [f'{tag}=~"{var}"' for tag, var in VARIABLE_FILTERS.items() if tag in spec.tag_keys]
    if matchers:
        parts.append(matchers)
    return f"{series}{{{', '.join(parts)}}}" if parts else series


def _by(labels: tuple[str, ...]) -> str:
    return f" by ({', '.join(labels)}) " if labels else ""


def _need(spec: MetricSpec, kind: MetricKind, labels: tuple[str, ...]) -> None:
    if spec.kind is not kind:
        raise ValueError(f"{spec.name} is a {spec.kind}, the query needs a {kind}")
    unknown = [label for label in labels if label not in (*spec.tag_keys, "le")]
    if unknown:
        raise ValueError(f"{spec.name} has no tag(s) {unknown}")


def counter_rate(spec: MetricSpec, by: tuple[str, ...] = (), matchers: str = "") -> str:
    """Per-second rate of a counter, summed over all label sets except ``by``."""
    _need(spec, MetricKind.COUNTER, by)
    return f"sum{_by(by)}(rate({selector(spec.exported_name, spec, matchers)}[{RATE_WINDOW}]))"


def counter_ratio(spec: MetricSpec, numerator_matchers: str) -> str:
    """Share of a counter's rate matching ``numerator_matchers`` (e.g. the 5xx ratio); 0, not "no data",
    while traffic flows and nothing matches."""
    return f"({counter_rate(spec, (), numerator_matchers)} or vector(0)) / {counter_rate(spec)}"


def histogram_quantile(quantile: float, spec: MetricSpec, by: tuple[str, ...] = (), matchers: str = "") -> str:
    _need(spec, MetricKind.HISTOGRAM, by)
    bucket = selector(f"{spec.exported_name}_bucket", spec, matchers)
    return f"histogram_quantile({quantile}, sum{_by(('le', *by))}(rate({bucket}[{RATE_WINDOW}])))"


def histogram_mean(spec: MetricSpec, by: tuple[str, ...] = (), matchers: str = "") -> str:
    """Mean observation over the rate window (rate of ``_sum`` over rate of ``_count``)."""
    _need(spec, MetricKind.HISTOGRAM, by)
    rates = (
        f"sum{_by(by)}(rate({selector(f'{spec.exported_name}_{part}', spec, matchers)}[{RATE_WINDOW}]))"
        for part in ("sum", "count")
    )
    return " / ".join(rates)


def gauge(spec: MetricSpec, by: tuple[str, ...] = (), aggregation: str = "sum", matchers: str = "") -> str:
    _need(spec, MetricKind.GAUGE, by)
    return f"{aggregation}{_by(by)}({selector(spec.exported_name, spec, matchers)})"


def label_values(spec: MetricSpec, label: str) -> str:
    """A Grafana variable query listing the values of ``label``."""
    _need(spec, spec.kind, (label,))
    return f"label_values({spec.exported_series[0]}, {label})"
