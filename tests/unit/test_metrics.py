from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from serve_app.engine.types import EngineStats
from serve_app.observability import metrics as m
from serve_app.observability.backends import InMemoryMetricsBackend
from serve_app.observability.metrics import METRICS, Component, MetricKind, MetricSpec
from serve_app.observability.recorder import ServeAppMetrics


@pytest.fixture
def store() -> InMemoryMetricsBackend:
    return InMemoryMetricsBackend()


@pytest.fixture
def metrics(store: InMemoryMetricsBackend) -> ServeAppMetrics:
    return ServeAppMetrics(store)


# -- the spec ---------------------------------------------------------------------------------


def test_spec_names_are_unique_prefixed_and_export_distinct_series() -> None:
    names = [s.name for s in METRICS]
    assert len(names) == len(set(names))
    assert all(n.startswith("serve_app_") for n in names)
    series = [x for s in METRICS for x in s.exported_series]
    assert len(series) == len(set(series))


def test_exported_names_follow_ray_and_prometheus_conventions() -> None:
    assert m.REQUESTS.exported_name == "ray_serve_app_requests_total"
    assert m.ROUTER_QUEUE_DEPTH.exported_series == ("ray_serve_app_router_queue_depth",)
    assert m.TIME_TO_FIRST_TOKEN.exported_series == (
        "ray_serve_app_time_to_first_token_seconds_bucket",
        "ray_serve_app_time_to_first_token_seconds_sum",
        "ray_serve_app_time_to_first_token_seconds_count",
    )


def test_llm_buckets_span_the_required_ranges() -> None:
    assert (m.TTFT_BUCKETS[0], m.TTFT_BUCKETS[-1]) == (0.005, 60.0)
    assert (m.TOKEN_LATENCY_BUCKETS[0], m.TOKEN_LATENCY_BUCKETS[-1]) == (0.001, 2.0)
    assert (m.E2E_BUCKETS[0], m.E2E_BUCKETS[-1]) == (0.01, 600.0)
    assert (m.BATCH_SIZE_BUCKETS[0], m.BATCH_SIZE_BUCKETS[-1]) == (0.5, 1024.5)


def ray_bucket_midpoints(bounds: tuple[float, ...]) -> list[float]:
    """The value Ray's metrics agent re-records each observation of a bucket at (its _sum comes
    from these): OpenTelemetryMetricRecorder.register_histogram_metric, for positive bounds."""
    return [(lower + upper) / 2 for lower, upper in zip((0.0, *bounds[:-1]), bounds, strict=True)]


def prometheus_quantile(q: float, bounds: tuple[float, ...], counts: list[int]) -> float:
    """Prometheus' histogram_quantile over classic buckets (per-bucket counts, +Inf last): linear
    interpolation inside the bucket holding the rank, the lowest bucket starting at 0."""
    cumulative = [sum(counts[: i + 1]) for i in range(len(counts))]
    rank = q * cumulative[-1]
    b = next(i for i, c in enumerate(cumulative) if c >= rank)
    if b == len(bounds):
        return bounds[-1]
    start = 0.0 if b == 0 else bounds[b - 1]
    below = 0 if b == 0 else cumulative[b - 1]
    return start + (bounds[b] - start) * (rank - below) / counts[b]


def counts_of(bounds: tuple[float, ...], observations: list[int]) -> list[int]:
    counts = [0] * (len(bounds) + 1)
    for value in observations:
        counts[next((i for i, le in enumerate(bounds) if value <= le), len(bounds))] += 1
    return counts


def test_the_reference_quantile_reproduces_the_half_median_of_power_of_two_edges() -> None:
    """Why the batch-size edges sit between whole numbers: with edges 1, 2, 4, ... unbatched
    traffic (every batch of 1) read as a median of 0.5 and a mean of 0.5."""
    old = (1.0, 2.0, 4.0, 8.0)
    assert prometheus_quantile(0.5, old, counts_of(old, [1] * 10)) == 0.5
    assert ray_bucket_midpoints(old)[0] == 0.5


@pytest.mark.parametrize("size", range(1, 9))
def test_batch_sizes_up_to_8_read_exactly_as_mean_and_median(size: int) -> None:
    bounds = m.BATCH_SIZE_BUCKETS
    counts = counts_of(bounds, [size] * 10)
    (bucket,) = [i for i, c in enumerate(counts) if c]
    assert ray_bucket_midpoints(bounds)[bucket] == size  # the mean from _sum / _count
    assert prometheus_quantile(0.5, bounds, counts) == size
    assert size <= prometheus_quantile(0.95, bounds, counts) < size + 0.5


def test_large_batch_sizes_read_within_their_bucket() -> None:
    bounds = m.BATCH_SIZE_BUCKETS
    for size in (9, 16, 17, 100, 1024):
        counts = counts_of(bounds, [size] * 4)
        (bucket,) = [i for i, c in enumerate(counts) if c]
        assert bounds[bucket - 1] < ray_bucket_midpoints(bounds)[bucket] <= bounds[bucket]
        assert bounds[bucket - 1] < size <= bounds[bucket]


@pytest.mark.parametrize(
    ("name", "kind", "buckets", "error"),
    [
        ("requests", MetricKind.COUNTER, (), "start with"),
        ("serve_app_Bad", MetricKind.GAUGE, (), "snake_case"),
        ("serve_app_requests_total", MetricKind.COUNTER, (), "_total"),
        ("serve_app_latency", MetricKind.HISTOGRAM, (), "buckets are required"),
        ("serve_app_depth", MetricKind.GAUGE, (1.0,), "buckets are required"),
        ("serve_app_latency", MetricKind.HISTOGRAM, (1.0, 0.5), "strictly increasing"),
        ("serve_app_latency", MetricKind.HISTOGRAM, (0.0, 1.0), "strictly increasing"),
    ],
)
def test_invalid_specs_are_rejected(name: str, kind: MetricKind, buckets: tuple[float, ...], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        MetricSpec(name, kind, "d", ("model",), "s", Component.ROUTER, "request_finished", buckets)


def test_importing_observability_imports_neither_ray_nor_vllm() -> None:
    code = "import sys, serve_app.observability.recorder; print(sorted(k for k in ('ray', 'vllm') if k in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# -- typed helpers ----------------------------------------------------------------------------


def test_request_finished_counts_by_status_and_times_by_status_class(
    metrics: ServeAppMetrics, store: InMemoryMetricsBackend
) -> None:
    metrics.request_finished("/v1/completions", "m", 200, 1.5)
    metrics.request_finished("/v1/completions", "m", 200, 0.5)
    metrics.request_finished("/v1/completions", "m", 429, 0.001)
    assert store.counter("serve_app_requests", route="/v1/completions", model="m", status="200") == 2
    assert store.counter("serve_app_requests", route="/v1/completions", model="m", status="429") == 1
    name = "serve_app_request_latency_seconds"
    assert store.observations(name, route="/v1/completions", model="m", status_class="2xx") == [1.5, 0.5]
    assert store.observations(name, route="/v1/completions", model="m", status_class="4xx") == [0.001]


def test_zero_token_counts_are_skipped_and_negatives_refused(
    metrics: ServeAppMetrics, store: InMemoryMetricsBackend
) -> None:
    metrics.request_tokens("m", prompt_tokens=12, completion_tokens=0)
    assert store.counter("serve_app_prompt_tokens", model="m") == 12
    assert ("serve_app_completion_tokens", (("model", "m"),)) not in store.counters
    with pytest.raises(ValueError, match="negative"):
        metrics.request_tokens("m", prompt_tokens=-1, completion_tokens=1)
    with pytest.raises(ValueError, match="negative"):
        metrics.queue_wait("m", -0.1)


def test_wrong_tags_fail_loudly(metrics: ServeAppMetrics) -> None:
    with pytest.raises(ValueError, match="non-empty strings"):
        metrics.request_rejected("")
    with pytest.raises(ValueError, match="takes tags"):
        metrics._set(m.ROUTER_QUEUE_DEPTH, 1, model="m")
    with pytest.raises(TypeError, match="is a gauge"):
        metrics._inc(m.ROUTER_QUEUE_DEPTH, 1, replica="r")


def test_engine_stats_and_autoscaling_decision(metrics: ServeAppMetrics, store: InMemoryMetricsBackend) -> None:
    metrics.engine_stats("m", "r1", EngineStats(running=3, waiting=2, kv_cache_usage=0.75, prefix_cache_hit_rate=0.5))
    assert store.gauge("serve_app_engine_running_sequences", model="m", replica="r1") == 3
    assert store.gauge("serve_app_engine_waiting_sequences", model="m", replica="r1") == 2
    assert store.gauge("serve_app_engine_kv_cache_usage_ratio", model="m", replica="r1") == 0.75
    assert store.gauge("serve_app_engine_prefix_cache_hit_rate", model="m", replica="r1") == 0.5
    metrics.autoscaling_decision("LLM", current_replicas=2, desired_replicas=4, target_replicas=2, reason="up_pending")
    metrics.autoscaling_decision("LLM", current_replicas=2, desired_replicas=4, target_replicas=4, reason="up_overload")
    assert store.gauge("serve_app_replicas", deployment="LLM") == 2
    assert store.gauge("serve_app_autoscaling_target_replicas", deployment="LLM") == 4
    assert store.counter("serve_app_autoscaling_decisions", deployment="LLM", reason="up_pending") == 1


SAMPLE_CALLS: dict[str, tuple[Any, ...]] = {
    "request_finished": ("/generate", "m", 200, 0.1),
    "request_tokens": ("m", 5, 7),
    "first_token": ("m", 0.05),
    "time_per_output_token": ("m", 0.01),
    "inter_token": ("m", 0.01),
    "request_rejected": ("queue_full",),
    "router_batch": ("m", 4),
    "router_queue": ("router-1", 3, 120),
    "queue_wait": ("m", 0.002),
    "replica_load": ("LLM", "replica-1", 2, 300),
    "engine_stats": ("m", "replica-1", EngineStats(running=1, waiting=0, kv_cache_usage=0.1)),
    "autoscaling_decision": ("LLM", 1, 2, 1, "up_pending"),
    "adapter_request": ("m", "pirate", 5, 7),
    "adapter_routed": ("llm-m", "pirate", "hit"),
    "adapter_loaded": ("m", "pirate"),
    "adapter_load_failed": ("m",),
    "adapter_evicted": ("m", "pirate"),
    "tenant_request": ("acme", "batch", "quota"),
    "tenant_tokens": ("acme", 5, 7),
    "flow_queue": ("router-1", {"interactive": 1, "batch": 3}),
    "flow_queue_wait": ("interactive", 0.01),
}


@pytest.mark.parametrize("helper", sorted({s.recorder for s in METRICS}))
def test_each_helper_records_exactly_the_specs_naming_it(helper: str) -> None:
    store = InMemoryMetricsBackend()
    getattr(ServeAppMetrics(store), helper)(*SAMPLE_CALLS[helper])
    assert store.recorded_names() == {s.name for s in METRICS if s.recorder == helper}


def test_every_helper_in_the_samples_is_named_by_a_spec() -> None:
    assert set(SAMPLE_CALLS) == {s.recorder for s in METRICS}


# -- stream timing ----------------------------------------------------------------------------


def test_stream_timer_derives_ttft_itl_and_tpot(metrics: ServeAppMetrics, store: InMemoryMetricsBackend) -> None:
    timer = metrics.stream_timer("m", started_at=100.0)
    timer.on_tokens(1, now=100.5)  # first token after 0.5 s
    timer.on_tokens(3, now=100.7)  # 2 tokens in 0.2 s
    timer.on_tokens(3, now=100.8)  # no new token: ignored
    timer.on_tokens(4, now=101.0)  # 1 token in 0.3 s
    timer.finish()
    timer.finish()
    assert store.observations("serve_app_time_to_first_token_seconds", model="m") == [0.5]
    assert store.observations("serve_app_inter_token_latency_seconds", model="m") == pytest.approx([0.1, 0.3])
    # 3 tokens decoded after the first chunk, in 0.5 s
    assert store.observations("serve_app_time_per_output_token_seconds", model="m") == pytest.approx([0.5 / 3])


def test_stream_timer_with_one_chunk_has_no_tpot(metrics: ServeAppMetrics, store: InMemoryMetricsBackend) -> None:
    timer = metrics.stream_timer("m", started_at=0.0)
    timer.on_tokens(16, now=2.0)  # a non-streamed answer arrives whole
    timer.finish()
    timer.on_tokens(20, now=3.0)  # after finish: ignored
    assert store.observations("serve_app_time_to_first_token_seconds", model="m") == [2.0]
    assert store.observations("serve_app_time_per_output_token_seconds", model="m") == []
    assert store.observations("serve_app_inter_token_latency_seconds", model="m") == []
