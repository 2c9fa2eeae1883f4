"""The LoRA adapters dashboard's panels (serve_app.observability.dashboards ``adapters``): traffic
and tokens per adapter and adapter affinity, then replica choices, loads and evictions."""

from __future__ import annotations

from serve_app.observability import metrics as m
from serve_app.observability import promql as q
from serve_app.observability.grafana_json import Panel, Query


def adapter_traffic_panels() -> tuple[Panel, ...]:
    """Requests and tokens per adapter, and how often affinity found the adapter already loaded."""
    by_adapter = ("adapter",)
    hits = q.counter_rate(m.ADAPTER_ROUTING, by_adapter, 'outcome="hit"')
    return (
        Panel(
            "Requests/s by adapter",
            m.ADAPTER_REQUESTS.description,
            "reqps",
            (Query(q.counter_rate(m.ADAPTER_REQUESTS, by_adapter), "{{adapter}}"),),
            width=8,
        ),
        Panel(
            "Tokens/s by adapter",
            "Prompt and generated tokens per second of finished requests naming each adapter.",
            "short",
            (
                Query(q.counter_rate(m.ADAPTER_PROMPT_TOKENS, by_adapter), "prompt {{adapter}}"),
                Query(q.counter_rate(m.ADAPTER_COMPLETION_TOKENS, by_adapter), "completion {{adapter}}"),
            ),
            width=8,
        ),
        Panel(
            "Affinity hit rate by adapter",
            "Share of an adapter's requests sent to a replica whose engine held it already.",
            "percentunit",
            (
                Query(
                    f"({hits} or {q.counter_rate(m.ADAPTER_ROUTING, by_adapter)} * 0) / "
                    f"{q.counter_rate(m.ADAPTER_ROUTING, by_adapter)}",
                    "{{adapter}}",
                ),
            ),
            max_value=1,
            width=8,
        ),
    )


def adapter_cache_panels() -> tuple[Panel, ...]:
    """Replica choices by outcome, and adapters loaded into, refused by and evicted from engines."""
    by_adapter = ("adapter",)
    return (
        Panel(
            "Replica choices/s by outcome",
            m.ADAPTER_ROUTING.description,
            "short",
            (Query(q.counter_rate(m.ADAPTER_ROUTING, ("outcome",)), "{{outcome}}"),),
            width=8,
        ),
        Panel(
            "Adapter loads and evictions/s",
            "Adapters loaded into replica engines, refused loads, and adapters evicted from an engine's cache.",
            "short",
            (
                Query(q.counter_rate(m.ADAPTER_LOADS, by_adapter), "loaded {{adapter}}"),
                Query(q.counter_rate(m.ADAPTER_EVICTIONS, by_adapter), "evicted {{adapter}}"),
                Query(q.counter_rate(m.ADAPTER_LOAD_FAILURES), "refused"),
            ),
            width=8,
        ),
    )
