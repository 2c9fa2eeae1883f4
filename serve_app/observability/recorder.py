"""Typed record helpers over the metric specs: the one API router, replica and autoscaler call.

Each process creates its own instance explicitly (``ServeAppMetrics.for_ray()`` inside a Ray
actor, ``ServeAppMetrics(InMemoryMetricsBackend())`` in tests); nothing is global. Tags are
checked against the spec on every record, so a wrong tag fails in unit tests rather than being
silently dropped by Ray. Times are seconds from the caller's monotonic clock.
"""

from __future__ import annotations

from collections.abc import Mapping

from serve_app.engine.types import EngineStats
from serve_app.observability import metrics as m
from serve_app.observability.backends import MetricsBackend, NullMetricsBackend, RayMetricsBackend
from serve_app.observability.metrics import MetricKind, MetricSpec


class ServeAppMetrics:
    def __init__(self, backend: MetricsBackend) -> None:
        self.backend = backend

    @classmethod
    def for_ray(cls) -> ServeAppMetrics:
        return cls(RayMetricsBackend())

    @classmethod
    def disabled(cls) -> ServeAppMetrics:
        return cls(NullMetricsBackend())

    # -- router -----------------------------------------------------------------------------

    def request_finished(self, route: str, model: str, status: int, latency_s: float) -> None:
        """Every answered HTTP request, rejections and errors included. ``route`` is the route
        template (``/v1/chat/completions``), never the raw path, to keep label cardinality bounded."""
        self._inc(m.REQUESTS, 1, route=route, model=model, status=str(status))
        self._observe(m.REQUEST_LATENCY, latency_s, route=route, model=model, status_class=f"{status // 100}xx")

    def request_tokens(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        self._inc(m.PROMPT_TOKENS, prompt_tokens, model=model)
        self._inc(m.COMPLETION_TOKENS, completion_tokens, model=model)

    def first_token(self, model: str, ttft_s: float) -> None:
        self._observe(m.TIME_TO_FIRST_TOKEN, ttft_s, model=model)

    def time_per_output_token(self, model: str, seconds: float) -> None:
        self._observe(m.TIME_PER_OUTPUT_TOKEN, seconds, model=model)

    def inter_token(self, model: str, seconds: float) -> None:
        self._observe(m.INTER_TOKEN_LATENCY, seconds, model=model)

    def stream_timer(self, model: str, started_at: float) -> StreamTimer:
        """Token timing for one streamed sequence; feed it each chunk's running token count."""
        return StreamTimer(self, model, started_at)

    def request_rejected(self, reason: str) -> None:
        """A request refused before reaching a replica; ``reason`` is a short code (``queue_full``)."""
        self._inc(m.ROUTER_REJECTIONS, 1, reason=reason)

    def router_batch(self, model: str, size: int) -> None:
        self._observe(m.ROUTER_BATCH_SIZE, size, model=model)

    def router_queue(self, replica: str, queued_requests: int, queued_tokens: int) -> None:
        """The router replica's admission budgets in use (``AdmissionController.queued_*``)."""
        self._set(m.ROUTER_QUEUE_DEPTH, queued_requests, replica=replica)
        self._set(m.ROUTER_QUEUED_TOKENS, queued_tokens, replica=replica)

    def queue_wait(self, model: str, wait_s: float) -> None:
        self._observe(m.ROUTER_QUEUE_WAIT, wait_s, model=model)

    def adapter_request(self, model: str, adapter: str, prompt_tokens: int, completion_tokens: int) -> None:
        """A finished request naming a LoRA adapter the app serves (never a name a client made up)."""
        self._inc(m.ADAPTER_REQUESTS, 1, model=model, adapter=adapter)
        self._inc(m.ADAPTER_PROMPT_TOKENS, prompt_tokens, model=model, adapter=adapter)
        self._inc(m.ADAPTER_COMPLETION_TOKENS, completion_tokens, model=model, adapter=adapter)

    def adapter_routed(self, deployment: str, adapter: str, outcome: str) -> None:
        """One replica choice by adapter affinity: ``hit``, ``placed`` or ``spill``."""
        self._inc(m.ADAPTER_ROUTING, 1, deployment=deployment, adapter=adapter, outcome=outcome)

    def tenant_request(self, tenant: str, priority: str, outcome: str) -> None:
        """One flow-control decision; ``tenant`` is a configured tenant name or ``default``."""
        self._inc(m.TENANT_REQUESTS, 1, tenant=tenant, priority=priority, outcome=outcome)

    def tenant_tokens(self, tenant: str, prompt_tokens: int, completion_tokens: int) -> None:
        self._inc(m.TENANT_TOKENS, prompt_tokens, tenant=tenant, kind="prompt")
        self._inc(m.TENANT_TOKENS, completion_tokens, tenant=tenant, kind="completion")

    def flow_queue(self, replica: str, waiting_by_class: Mapping[str, int]) -> None:
        for priority, waiting in waiting_by_class.items():
            self._set(m.FLOW_QUEUE_DEPTH, waiting, replica=replica, priority=priority)

    def flow_queue_wait(self, priority: str, wait_s: float) -> None:
        self._observe(m.FLOW_QUEUE_WAIT, wait_s, priority=priority)

    # -- replica ----------------------------------------------------------------------------

    def adapter_loaded(self, model: str, adapter: str) -> None:
        self._inc(m.ADAPTER_LOADS, 1, model=model, adapter=adapter)

    def adapter_load_failed(self, model: str) -> None:
        self._inc(m.ADAPTER_LOAD_FAILURES, 1, model=model)

    def adapter_evicted(self, model: str, adapter: str) -> None:
        self._inc(m.ADAPTER_EVICTIONS, 1, model=model, adapter=adapter)

    def replica_load(self, deployment: str, replica: str, outstanding_requests: int, outstanding_tokens: int) -> None:
        self._set(m.REPLICA_OUTSTANDING_REQUESTS, outstanding_requests, deployment=deployment, replica=replica)
        self._set(m.REPLICA_OUTSTANDING_TOKENS, outstanding_tokens, deployment=deployment, replica=replica)

    def engine_stats(self, model: str, replica: str, stats: EngineStats) -> None:
        self._set(m.ENGINE_RUNNING, stats.running, model=model, replica=replica)
        self._set(m.ENGINE_WAITING, stats.waiting, model=model, replica=replica)
        self._set(m.ENGINE_KV_CACHE_USAGE, stats.kv_cache_usage, model=model, replica=replica)
        self._set(m.ENGINE_PREFIX_CACHE_HIT_RATE, stats.prefix_cache_hit_rate, model=model, replica=replica)

    # -- autoscaling policy -----------------------------------------------------------------

    def autoscaling_decision(
        self, deployment: str, current_replicas: int, desired_replicas: int, target_replicas: int, reason: str
    ) -> None:
        """One policy evaluation (``serve_app.core.autoscaling.ScalingDecision`` fields)."""
        self._set(m.REPLICAS, current_replicas, deployment=deployment)
        self._set(m.AUTOSCALING_DESIRED, desired_replicas, deployment=deployment)
        self._set(m.AUTOSCALING_TARGET, target_replicas, deployment=deployment)
        self._inc(m.AUTOSCALING_DECISIONS, 1, deployment=deployment, reason=reason)

    # -- plumbing ---------------------------------------------------------------------------

    def _inc(self, spec: MetricSpec, value: float, **tags: str) -> None:
        _check(spec, MetricKind.COUNTER, value, tags)
        if value > 0:  # Ray refuses zero increments; a zero changes nothing anyway.
            self.backend.increment(spec, float(value), tags)

    def _set(self, spec: MetricSpec, value: float, **tags: str) -> None:
        _check(spec, MetricKind.GAUGE, value, tags)
        self.backend.set(spec, float(value), tags)

    def _observe(self, spec: MetricSpec, value: float, **tags: str) -> None:
        _check(spec, MetricKind.HISTOGRAM, value, tags)
        self.backend.observe(spec, float(value), tags)


def _check(spec: MetricSpec, kind: MetricKind, value: float, tags: Mapping[str, str]) -> None:
    if spec.kind is not kind:
        raise TypeError(f"{spec.name} is a {spec.kind}, not a {kind}")
    if set(tags) != set(spec.tag_keys):
        raise ValueError(f"{spec.name} takes tags {sorted(spec.tag_keys)}, got {sorted(tags)}")
    bad = [k for k, v in tags.items() if not isinstance(v, str) or not v]
    if bad:
        raise ValueError(f"{spec.name}: tag value(s) {bad} must be non-empty strings")
    # Counters only grow and every histogram here measures a duration or a size.
    if kind is not MetricKind.GAUGE and value < 0:
        raise ValueError(f"{spec.name}: negative value {value}")


class StreamTimer:
    """TTFT, inter-token latency and time per output token of one streamed sequence.

    Streamed chunks may carry several tokens. The inter-token latency of a chunk is the gap
    since the previous chunk divided by its new tokens (one observation per chunk). TPOT counts
    only the tokens after the first chunk over the time after it, so a first chunk holding many
    tokens does not make decoding look faster than it was.
    """

    def __init__(self, metrics: ServeAppMetrics, model: str, started_at: float) -> None:
        self._metrics = metrics
        self._model = model
        self._started_at = started_at
        self._first_at: float | None = None
        self._first_tokens = 0
        self._last_at = started_at
        self._tokens = 0
        self._finished = False

    def on_tokens(self, completion_tokens: int, now: float) -> None:
        """``completion_tokens`` is the running count of streamed events (serve_app.router.relay.sse_events)."""
        new_tokens = completion_tokens - self._tokens
        if new_tokens <= 0 or self._finished:
            return
        if self._first_at is None:
            self._first_at = now
            self._first_tokens = completion_tokens
            self._metrics.first_token(self._model, max(0.0, now - self._started_at))
        else:
            self._metrics.inter_token(self._model, max(0.0, now - self._last_at) / new_tokens)
        self._last_at = now
        self._tokens = completion_tokens

    def finish(self) -> None:
        """Records TPOT once; later calls and chunks are ignored."""
        if self._finished:
            return
        self._finished = True
        decoded_after_first = self._tokens - self._first_tokens
        if self._first_at is not None and decoded_after_first > 0:
            self._metrics.time_per_output_token(self._model, (self._last_at - self._first_at) / decoded_after_first)
