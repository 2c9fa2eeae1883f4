"""Every metric of serve_app, as plain constant data.

This module is the single source of truth: the recorder (:mod:`serve_app.observability.recorder`),
the Grafana dashboards, ``docs/metrics.md`` and the tests all read :data:`METRICS`.

Names as Prometheus sees them: Ray's metrics agent exports each ``ray.util.metrics`` metric
named ``N`` as ``ray_N`` (``OpenTelemetryMetricRecorder``, namespace ``ray``; the older
OpenCensus path uses the same namespace). A counter is a Prometheus counter, so the exposition
appends ``_total`` (``ray_serve_app_requests_total``); a histogram is exported as
``ray_N_bucket`` / ``ray_N_sum`` / ``ray_N_count``; a gauge keeps ``ray_N``. Ray also adds its
own labels (e.g. ``otel_scope_name``), so dashboards always aggregate with ``sum by``.

Ray re-creates histogram data in its agent from bucket counts and bucket midpoints, so
``_sum`` (and any mean derived from it) is approximate; quantiles from ``_bucket`` are what
the dashboards show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

METRIC_PREFIX = "serve_app_"
# Namespace Ray's metrics agent puts in front of every application metric it exports.
RAY_EXPORT_PREFIX = "ray_"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class MetricKind(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class Component(StrEnum):
    """The process that records a metric (the one that must hold a ServeAppMetrics)."""

    ROUTER = "router"
    REPLICA = "replica"
    AUTOSCALER = "autoscaler"


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: MetricKind
    description: str
    tag_keys: tuple[str, ...]
    unit: str
    component: Component
    # The ServeAppMetrics method that records this metric (checked by the tests).
    recorder: str
    buckets: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.name.startswith(METRIC_PREFIX) or not _NAME_RE.match(self.name):
            raise ValueError(f"metric name {self.name!r} must be snake_case and start with {METRIC_PREFIX!r}")
        if self.kind is MetricKind.COUNTER and self.name.endswith("_total"):
            # The exporter appends _total itself; a spec name ending in it reads as if it were doubled.
            raise ValueError(f"counter {self.name!r}: leave out the _total suffix")
        if (self.kind is MetricKind.HISTOGRAM) != bool(self.buckets):
            raise ValueError(f"{self.name!r}: buckets are required for histograms and only for them")
        if any(b <= 0 for b in self.buckets) or list(self.buckets) != sorted(set(self.buckets)):
            raise ValueError(f"{self.name!r}: buckets must be strictly increasing positive numbers")

    @property
    def exported_name(self) -> str:
        """The metric family name in Prometheus."""
        suffix = "_total" if self.kind is MetricKind.COUNTER else ""
        return f"{RAY_EXPORT_PREFIX}{self.name}{suffix}"

    @property
    def exported_series(self) -> tuple[str, ...]:
        """Every series name a PromQL query may select for this metric."""
        if self.kind is MetricKind.HISTOGRAM:
            return tuple(f"{self.exported_name}_{part}" for part in ("bucket", "sum", "count"))
        return (self.exported_name,)


# Buckets sized for LLM serving: a decode step takes milliseconds, prefill of a long prompt
# under load can take a minute, a long generation can run for ten minutes.
TTFT_BUCKETS = (
    0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
    1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0,
)  # fmt: skip
TOKEN_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0,
)  # fmt: skip
E2E_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0,
    15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0,
)  # fmt: skip
QUEUE_WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Batch sizes are whole numbers. Edges halfway between them give each size from 1 to 8 a bucket
# centred on it: Ray's agent re-records every observation at its bucket's midpoint, so the mean
# (_sum / _count) is exact there, and histogram_quantile reads 1 as the median of unbatched
# traffic (with edges 1, 2, 4, ... size 1 fell in the lowest bucket, which it interpolates from
# 0: a median of 0.5). Past 8 the widths double and the mean is approximate.
BATCH_SIZE_BUCKETS = (*(n + 0.5 for n in range(9)), *(2.0**k + 0.5 for k in range(4, 11)))  # 0.5 .. 1024.5

_C, _G, _H = MetricKind.COUNTER, MetricKind.GAUGE, MetricKind.HISTOGRAM
_ROUTER, _REPLICA, _AUTOSCALER = Component.ROUTER, Component.REPLICA, Component.AUTOSCALER

REQUESTS = MetricSpec(
    "serve_app_requests", _C, "HTTP requests answered, by route template, model and HTTP status code.",
    ("route", "model", "status"), "requests", _ROUTER, "request_finished",
)  # fmt: skip
REQUEST_LATENCY = MetricSpec(
    "serve_app_request_latency_seconds", _H,
    "End-to-end request latency at the router (arrival to last byte), by status class (2xx/4xx/5xx).",
    ("route", "model", "status_class"), "seconds", _ROUTER, "request_finished", E2E_BUCKETS,
)  # fmt: skip
TIME_TO_FIRST_TOKEN = MetricSpec(
    "serve_app_time_to_first_token_seconds", _H, "Time from admission to a stream's first event (streamed requests).",
    ("model",), "seconds", _ROUTER, "first_token", TTFT_BUCKETS,
)  # fmt: skip
TIME_PER_OUTPUT_TOKEN = MetricSpec(
    "serve_app_time_per_output_token_seconds", _H,
    "Per stream: time from the first to the last streamed chunk / the events after the first chunk.",
    ("model",), "seconds", _ROUTER, "time_per_output_token", TOKEN_LATENCY_BUCKETS,
)  # fmt: skip
INTER_TOKEN_LATENCY = MetricSpec(
    "serve_app_inter_token_latency_seconds", _H,
    "Gap between streamed chunks divided by the events the chunk carried (vLLM: one per engine step and choice).",
    ("model",), "seconds", _ROUTER, "inter_token", TOKEN_LATENCY_BUCKETS,
)  # fmt: skip
PROMPT_TOKENS = MetricSpec(
    "serve_app_prompt_tokens", _C, "Prompt tokens of finished requests.",
    ("model",), "tokens", _ROUTER, "request_tokens",
)  # fmt: skip
COMPLETION_TOKENS = MetricSpec(
    "serve_app_completion_tokens", _C, "Generated (completion) tokens of finished requests.",
    ("model",), "tokens", _ROUTER, "request_tokens",
)  # fmt: skip
ROUTER_BATCH_SIZE = MetricSpec(
    "serve_app_router_batch_size", _H, "Requests per batch the router sends to a replica.",
    ("model",), "requests", _ROUTER, "router_batch", BATCH_SIZE_BUCKETS,
)  # fmt: skip
ROUTER_QUEUE_DEPTH = MetricSpec(
    "serve_app_router_queue_depth", _G, "Requests admitted by one router replica and not yet finished.",
    ("replica",), "requests", _ROUTER, "router_queue",
)  # fmt: skip
ROUTER_QUEUED_TOKENS = MetricSpec(
    "serve_app_router_queued_tokens", _G,
    "Estimated tokens (prompt + max_tokens) of the requests admitted by one router replica.",
    ("replica",), "tokens", _ROUTER, "router_queue",
)  # fmt: skip
ROUTER_QUEUE_WAIT = MetricSpec(
    "serve_app_router_queue_wait_seconds", _H, "Time from admission to dispatch to a replica (batching included).",
    ("model",), "seconds", _ROUTER, "queue_wait", QUEUE_WAIT_BUCKETS,
)  # fmt: skip
ROUTER_REJECTIONS = MetricSpec(
    "serve_app_router_rejections", _C, "Requests refused before reaching a replica, by reason (e.g. queue_full).",
    ("reason",), "requests", _ROUTER, "request_rejected",
)  # fmt: skip
REPLICAS = MetricSpec(
    "serve_app_replicas", _G, "Running replicas of a deployment as the autoscaling policy sees them.",
    ("deployment",), "replicas", _AUTOSCALER, "autoscaling_decision",
)  # fmt: skip
AUTOSCALING_DESIRED = MetricSpec(
    "serve_app_autoscaling_desired_replicas", _G,
    "Replicas the load signals ask for now (before the up/down-scale delays).",
    ("deployment",), "replicas", _AUTOSCALER, "autoscaling_decision",
)  # fmt: skip
AUTOSCALING_TARGET = MetricSpec(
    "serve_app_autoscaling_target_replicas", _G, "Replica count the autoscaling policy returned to Ray Serve.",
    ("deployment",), "replicas", _AUTOSCALER, "autoscaling_decision",
)  # fmt: skip
AUTOSCALING_DECISIONS = MetricSpec(
    "serve_app_autoscaling_decisions", _C, "Autoscaling policy evaluations, by decision reason code.",
    ("deployment", "reason"), "decisions", _AUTOSCALER, "autoscaling_decision",
)  # fmt: skip
REPLICA_OUTSTANDING_REQUESTS = MetricSpec(
    "serve_app_replica_outstanding_requests", _G, "Requests accepted by one replica and not yet finished.",
    ("deployment", "replica"), "requests", _REPLICA, "replica_load",
)  # fmt: skip
REPLICA_OUTSTANDING_TOKENS = MetricSpec(
    "serve_app_replica_outstanding_tokens", _G, "Estimated tokens (prompt + max_tokens) outstanding on one replica.",
    ("deployment", "replica"), "tokens", _REPLICA, "replica_load",
)  # fmt: skip
ENGINE_RUNNING = MetricSpec(
    "serve_app_engine_running_sequences", _G, "Sequences the engine is decoding or prefilling.",
    ("model", "replica"), "sequences", _REPLICA, "engine_stats",
)  # fmt: skip
ENGINE_WAITING = MetricSpec(
    "serve_app_engine_waiting_sequences", _G, "Sequences queued inside the engine, waiting for KV-cache space.",
    ("model", "replica"), "sequences", _REPLICA, "engine_stats",
)  # fmt: skip
ENGINE_KV_CACHE_USAGE = MetricSpec(
    "serve_app_engine_kv_cache_usage_ratio", _G, "Fraction of the engine's KV-cache blocks in use (0..1).",
    ("model", "replica"), "ratio", _REPLICA, "engine_stats",
)  # fmt: skip
ENGINE_PREFIX_CACHE_HIT_RATE = MetricSpec(
    "serve_app_engine_prefix_cache_hit_rate", _G, "Fraction of prompt tokens served from the prefix cache (0..1).",
    ("model", "replica"), "ratio", _REPLICA, "engine_stats",
)  # fmt: skip
# LoRA adapters. The adapter label takes only names the app serves (the config's adapters and at
# most ``lora.max_dynamic_adapters`` added at run time per model): a request naming anything else
# is refused before it is counted here, so the label's values stay bounded.
ADAPTER_REQUESTS = MetricSpec(
    "serve_app_adapter_requests", _C, "Finished requests naming a LoRA adapter, by model (the base) and adapter.",
    ("model", "adapter"), "requests", _ROUTER, "adapter_request",
)  # fmt: skip
ADAPTER_PROMPT_TOKENS = MetricSpec(
    "serve_app_adapter_prompt_tokens", _C, "Prompt tokens of finished requests naming a LoRA adapter.",
    ("model", "adapter"), "tokens", _ROUTER, "adapter_request",
)  # fmt: skip
ADAPTER_COMPLETION_TOKENS = MetricSpec(
    "serve_app_adapter_completion_tokens", _C, "Generated tokens of finished requests naming a LoRA adapter.",
    ("model", "adapter"), "tokens", _ROUTER, "adapter_request",
)  # fmt: skip
ADAPTER_ROUTING = MetricSpec(
    "serve_app_adapter_routing", _C,
    "Replica choices for requests naming an adapter, by outcome: hit (a replica holding it), placed (none held it), "
    "spill (the holder was too loaded); with router.adapter_affinity off, hit or miss.",
    ("deployment", "adapter", "outcome"), "choices", _ROUTER, "adapter_routed",
)  # fmt: skip
ADAPTER_LOADS = MetricSpec(
    "serve_app_adapter_loads", _C, "LoRA adapters loaded into a replica's engine (at start and at run time).",
    ("model", "adapter"), "loads", _REPLICA, "adapter_loaded",
)  # fmt: skip
ADAPTER_LOAD_FAILURES = MetricSpec(
    "serve_app_adapter_load_failures", _C, "Adapter loads refused on a replica (folder, rank, shapes, engine).",
    ("model",), "loads", _REPLICA, "adapter_load_failed",
)  # fmt: skip
ADAPTER_EVICTIONS = MetricSpec(
    "serve_app_adapter_evictions", _C,
    "Adapters that left a replica engine's adapter cache (vLLM's LRU of max_cpu_loras) between two routing polls.",
    ("model", "adapter"), "evictions", _REPLICA, "adapter_evicted",
)  # fmt: skip

TENANT_REQUESTS = MetricSpec(
    "serve_app_tenant_requests", _C,
    "Requests by tenant (configured names only), class and flow-control outcome: admitted, quota, "
    "concurrency, queue_full, shed, deadline, late (would wait past its deadline).",
    ("tenant", "priority", "outcome"), "requests", _ROUTER, "tenant_request",
)  # fmt: skip
TENANT_TOKENS = MetricSpec(
    "serve_app_tenant_tokens", _C, "Tokens of finished requests by tenant and kind (prompt, completion).",
    ("tenant", "kind"), "tokens", _ROUTER, "tenant_tokens",
)  # fmt: skip
FLOW_QUEUE_DEPTH = MetricSpec(
    "serve_app_flow_queue_depth", _G, "Requests waiting in one router replica's admission queue, by class.",
    ("replica", "priority"), "requests", _ROUTER, "flow_queue",
)  # fmt: skip
FLOW_QUEUE_WAIT = MetricSpec(
    "serve_app_flow_queue_wait_seconds", _H, "Time a started request waited in the admission queue, by class.",
    ("priority",), "seconds", _ROUTER, "flow_queue_wait", QUEUE_WAIT_BUCKETS,
)  # fmt: skip

METRICS: tuple[MetricSpec, ...] = (
    REQUESTS,
    REQUEST_LATENCY,
    TIME_TO_FIRST_TOKEN,
    TIME_PER_OUTPUT_TOKEN,
    INTER_TOKEN_LATENCY,
    PROMPT_TOKENS,
    COMPLETION_TOKENS,
    ROUTER_BATCH_SIZE,
    ROUTER_QUEUE_DEPTH,
    ROUTER_QUEUED_TOKENS,
    ROUTER_QUEUE_WAIT,
    ROUTER_REJECTIONS,
    REPLICAS,
    AUTOSCALING_DESIRED,
    AUTOSCALING_TARGET,
    AUTOSCALING_DECISIONS,
    REPLICA_OUTSTANDING_REQUESTS,
    REPLICA_OUTSTANDING_TOKENS,
    ENGINE_RUNNING,
    ENGINE_WAITING,
    ENGINE_KV_CACHE_USAGE,
    ENGINE_PREFIX_CACHE_HIT_RATE,
    ADAPTER_REQUESTS,
    ADAPTER_PROMPT_TOKENS,
    ADAPTER_COMPLETION_TOKENS,
    ADAPTER_ROUTING,
    ADAPTER_LOADS,
    ADAPTER_LOAD_FAILURES,
    ADAPTER_EVICTIONS,
    TENANT_REQUESTS,
    TENANT_TOKENS,
    FLOW_QUEUE_DEPTH,
    FLOW_QUEUE_WAIT,
)


def exported_series_names() -> frozenset[str]:
    """Every Prometheus series name serve_app's metrics produce."""
    return frozenset(series for spec in METRICS for series in spec.exported_series)
