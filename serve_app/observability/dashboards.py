"""serve_app's Grafana dashboards, generated from the metric specs (``serve-app dashboards generate``).

The JSON under ``dashboards/`` is output of this module; edit here, regenerate, commit both.
"""

from __future__ import annotations

from serve_app.observability import metrics as m
from serve_app.observability import promql as q
from serve_app.observability.adapter_panels import adapter_cache_panels, adapter_traffic_panels
from serve_app.observability.grafana_json import Dashboard, Panel, Query, Variable
from serve_app.observability.metrics import MetricSpec

QUANTILES = (0.5, 0.95, 0.99)
MODEL_VARIABLE = Variable("model", "Model", q.label_values(m.REQUESTS, "model"))
DEPLOYMENT_VARIABLE = Variable("deployment", "Deployment", q.label_values(m.REPLICAS, "deployment"))
# The replica deployments adapter requests were routed to (the request router knows its deployment).
ADAPTER_DEPLOYMENT_VARIABLE = Variable("deployment", "Deployment", q.label_values(m.ADAPTER_ROUTING, "deployment"))
OK = 'status_class="2xx"'


def quantiles_panel(title: str, spec: MetricSpec, unit: str = "s", matchers: str = "", width: int = 12) -> Panel:
    queries = tuple(Query(q.histogram_quantile(x, spec, matchers=matchers), f"p{round(x * 100)}") for x in QUANTILES)
    return Panel(title, spec.description, unit, queries, width=width)


def stat_panel(title: str, spec: MetricSpec, expr: str, unit: str, description: str = "") -> Panel:
    return Panel(title, description or spec.description, unit, (Query(expr, title),), kind="stat", width=4, height=4)


def per_replica_panel(title: str, spec: MetricSpec, unit: str, max_value: float | None = None) -> Panel:
    by = tuple(tag for tag in ("model", "deployment", "replica", "gpu") if tag in spec.tag_keys)
    legend = " ".join(f"{{{{{tag}}}}}" for tag in by)
    return Panel(title, spec.description, unit, (Query(q.gauge(spec, by), legend),), max_value=max_value)


def _headline_stats() -> tuple[Panel, ...]:
    """The single numbers across the top of the overview."""
    return (
        stat_panel("Requests/s", m.REQUESTS, q.counter_rate(m.REQUESTS), "reqps"),
        stat_panel(
            "Error ratio (5xx)",
            m.REQUESTS,
            q.counter_ratio(m.REQUESTS, 'status=~"5.."'),
            "percentunit",
            "Share of requests answered with a 5xx status.",
        ),
        stat_panel(
            "p95 latency (2xx)", m.REQUEST_LATENCY, q.histogram_quantile(0.95, m.REQUEST_LATENCY, matchers=OK), "s"
        ),
        stat_panel("p95 TTFT", m.TIME_TO_FIRST_TOKEN, q.histogram_quantile(0.95, m.TIME_TO_FIRST_TOKEN), "s"),
        stat_panel("p95 TPOT", m.TIME_PER_OUTPUT_TOKEN, q.histogram_quantile(0.95, m.TIME_PER_OUTPUT_TOKEN), "s"),
        stat_panel("Generated tokens/s", m.COMPLETION_TOKENS, q.counter_rate(m.COMPLETION_TOKENS), "short"),
    )


def overview() -> Dashboard:
    panels = (
        *_headline_stats(),
        Panel(
            "Requests/s by status",
            m.REQUESTS.description,
            "reqps",
            (Query(q.counter_rate(m.REQUESTS, ("status",)), "{{status}}"),),
        ),
        Panel(
            "Error ratio",
            "Share of requests answered with a 4xx or 5xx status.",
            "percentunit",
            (
                Query(q.counter_ratio(m.REQUESTS, 'status=~"5.."'), "5xx"),
                Query(q.counter_ratio(m.REQUESTS, 'status=~"4.."'), "4xx"),
            ),
        ),
        quantiles_panel("End-to-end latency (2xx)", m.REQUEST_LATENCY, matchers=OK),
        quantiles_panel("Time to first token", m.TIME_TO_FIRST_TOKEN),
        quantiles_panel("Time per output token", m.TIME_PER_OUTPUT_TOKEN),
        quantiles_panel("Inter-token latency", m.INTER_TOKEN_LATENCY),
        Panel(
            "Tokens/s",
            "Prompt and generated tokens of finished requests per second.",
            "short",
            (
                Query(q.counter_rate(m.PROMPT_TOKENS), "prompt"),
                Query(q.counter_rate(m.COMPLETION_TOKENS), "completion"),
            ),
        ),
        Panel(
            "Requests/s by route",
            m.REQUESTS.description,
            "reqps",
            (Query(q.counter_rate(m.REQUESTS, ("route",)), "{{route}}"),),
        ),
    )
    return Dashboard(
        "serve-app-overview", "Serve App / Overview", "Traffic, errors and LLM latency (TTFT, TPOT) at the router.",
        panels, (MODEL_VARIABLE,),
    )  # fmt: skip


def router() -> Dashboard:
    panels = (
        Panel(
            "Batch size",
            "Requests per batch the router sends to a replica: the mean (sum / count, exact for sizes up to 8) and "
            "quantiles (interpolated inside a bucket: within 0.5 of a size up to 8). Unbatched, mean and p50 read 1.",
            "short",
            (
                Query(q.histogram_mean(m.ROUTER_BATCH_SIZE), "mean"),
                *(Query(q.histogram_quantile(x, m.ROUTER_BATCH_SIZE), f"p{round(x * 100)}") for x in (0.5, 0.95)),
            ),
        ),
        quantiles_panel("Queue wait", m.ROUTER_QUEUE_WAIT),
        Panel(
            "Queue depth",
            m.ROUTER_QUEUE_DEPTH.description,
            "short",
            (Query(q.gauge(m.ROUTER_QUEUE_DEPTH, ("replica",)), "{{replica}}"),),
        ),
        Panel(
            "Queued tokens",
            m.ROUTER_QUEUED_TOKENS.description,
            "short",
            (Query(q.gauge(m.ROUTER_QUEUED_TOKENS, ("replica",)), "{{replica}}"),),
        ),
        Panel(
            "Rejections/s by reason",
            m.ROUTER_REJECTIONS.description,
            "reqps",
            (Query(q.counter_rate(m.ROUTER_REJECTIONS, ("reason",)), "{{reason}}"),),
        ),
        Panel(
            "Overload answers/s (429/503)",
            "Requests answered 429 or 503: admission refusals and unavailable replicas.",
            "reqps",
            (Query(q.counter_rate(m.REQUESTS, ("status",), 'status=~"429|503"'), "{{status}}"),),
        ),
        *_flow_control_row(),
    )
    return Dashboard(
        "serve-app-router", "Serve App / Router",
        "Router batching, admission queue and rejections; flow control per tenant and class.",
        panels, (MODEL_VARIABLE,),
    )  # fmt: skip


def _flow_control_row() -> tuple[Panel, ...]:
    """Flow control (flow_control config): per-tenant outcomes and tokens, the priority queue."""
    by_tenant = ("tenant", "outcome")
    return (
        Panel(
            "Tenant requests/s by outcome",
            m.TENANT_REQUESTS.description,
            "reqps",
            (Query(q.counter_rate(m.TENANT_REQUESTS, by_tenant), "{{tenant}} {{outcome}}"),),
            width=6,
        ),
        Panel(
            "Tenant tokens/s",
            m.TENANT_TOKENS.description,
            "short",
            (Query(q.counter_rate(m.TENANT_TOKENS, ("tenant", "kind")), "{{tenant}} {{kind}}"),),
            width=6,
        ),
        Panel(
            "Admission queue by class",
            m.FLOW_QUEUE_DEPTH.description,
            "short",
            (Query(q.gauge(m.FLOW_QUEUE_DEPTH, ("priority",)), "{{priority}}"),),
            width=6,
        ),
        Panel(
            "Admission queue wait p99 by class",
            m.FLOW_QUEUE_WAIT.description,
            "s",
            (Query(q.histogram_quantile(0.99, m.FLOW_QUEUE_WAIT, ("priority",)), "{{priority}}"),),
            width=6,
        ),
    )


def engine() -> Dashboard:
    panels = (
        per_replica_panel("KV-cache usage", m.ENGINE_KV_CACHE_USAGE, "percentunit", max_value=1),
        per_replica_panel("Prefix-cache hit rate", m.ENGINE_PREFIX_CACHE_HIT_RATE, "percentunit", max_value=1),
        per_replica_panel("Running sequences", m.ENGINE_RUNNING, "short"),
        per_replica_panel("Waiting sequences", m.ENGINE_WAITING, "short"),
        Panel(
            "Generated tokens/s by model",
            m.COMPLETION_TOKENS.description,
            "short",
            (Query(q.counter_rate(m.COMPLETION_TOKENS, ("model",)), "{{model}}"),),
        ),
        per_replica_panel("Outstanding requests per replica", m.REPLICA_OUTSTANDING_REQUESTS, "short"),
        per_replica_panel("Outstanding tokens per replica", m.REPLICA_OUTSTANDING_TOKENS, "short"),
    )
    return Dashboard(
        "serve-app-engine", "Serve App / Engine", "vLLM engine load per replica: KV cache, sequences, backlog.",
        panels, (MODEL_VARIABLE,),
    )  # fmt: skip


def autoscaling() -> Dashboard:
    by_deployment = ("deployment",)
    panels = (
        Panel(
            "Replicas: running, desired, target",
            "Running replicas, what the load asks for, and the policy's target.",
            "short",
            (
                Query(q.gauge(m.REPLICAS, by_deployment), "running {{deployment}}"),
                Query(q.gauge(m.AUTOSCALING_DESIRED, by_deployment), "desired {{deployment}}"),
                Query(q.gauge(m.AUTOSCALING_TARGET, by_deployment), "target {{deployment}}"),
            ),
            width=24,
        ),
        Panel(
            "Decisions/s by reason",
            m.AUTOSCALING_DECISIONS.description,
            "short",
            (Query(q.counter_rate(m.AUTOSCALING_DECISIONS, ("deployment", "reason")), "{{deployment}} {{reason}}"),),
        ),
        per_replica_panel("Outstanding requests per replica", m.REPLICA_OUTSTANDING_REQUESTS, "short"),
        Panel(
            "Mean waiting sequences per replica (signal)",
            m.ENGINE_WAITING.description,
            "short",
            (Query(q.gauge(m.ENGINE_WAITING, ("model",), aggregation="avg"), "{{model}}"),),
        ),
        Panel(
            "Mean KV-cache usage (signal)",
            m.ENGINE_KV_CACHE_USAGE.description,
            "percentunit",
            (Query(q.gauge(m.ENGINE_KV_CACHE_USAGE, ("model",), aggregation="avg"), "{{model}}"),),
            max_value=1,
        ),
    )
    return Dashboard(
        "serve-app-autoscaling", "Serve App / Autoscaling", "Replica counts and the signals the policy scales on.",
        panels, (MODEL_VARIABLE, DEPLOYMENT_VARIABLE),
    )  # fmt: skip


def adapters() -> Dashboard:
    """One row per concern of LoRA serving: traffic and tokens per adapter, affinity, loads."""
    panels = adapter_traffic_panels() + adapter_cache_panels()
    return Dashboard(
        "serve-app-adapters", "Serve App / LoRA adapters",
        "LoRA adapters: requests and tokens per adapter, adapter-affinity hit rate, loads and evictions.",
        panels, (MODEL_VARIABLE, ADAPTER_DEPLOYMENT_VARIABLE),
    )  # fmt: skip


def all_dashboards() -> tuple[Dashboard, ...]:
    return (overview(), router(), engine(), autoscaling(), adapters())
