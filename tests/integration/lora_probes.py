"""Probes of the real LoRA stack for tests/integration/test_lora.py: what the app's adapter catalog
actor, the model replicas and Ray's metrics exposition say."""

from __future__ import annotations

import re

import httpx

from serve_app.app import replica_deployment_name
from serve_app.core.policies import ROUTING_STAT_ADAPTERS
from serve_app.router.adapter_catalog import catalog_actor_name
from serve_app.router.cluster_quota import BANK_NAMESPACE
from tests.integration.conftest import RunningApp


def catalog_names(app_name: str = "serve-app") -> set[str]:
    """The adapters the app's catalog actor holds (the one every router replica reads)."""
    import ray

    actor = ray.get_actor(catalog_actor_name(app_name), namespace=BANK_NAMESPACE)
    return {adapter.name for adapter in ray.get(actor.read.remote(None, -1), timeout=60).adapters}


def short_chat(url: str, model: str, prompt: str = "What is the capital of France?") -> int:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 1}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120).status_code


def routers_that_served(metrics_url: str, adapter: str) -> int:
    """How many processes (router replicas) counted a request naming ``adapter``: Ray exports one
    series per process."""
    lines = httpx.get(metrics_url, timeout=30).text.splitlines()
    return sum(series_with(line, f'ray_serve_app_adapter_requests_total{{adapter="{adapter}"') for line in lines)


def series_with(line: str, wanted: str) -> bool:
    """Whether an exposition line is ``wanted``'s series with its label (Ray adds labels of its own)."""
    name, _, label = wanted.partition("{")
    return line.startswith(name + "{") and label in line


COUNTER = re.compile(r"^ray_(serve_app_adapter_\w+)_total\{([^}]*)\} ([0-9.e+-]+)$")


def replica_adapters(stack: RunningApp) -> dict[str, set[str]]:
    """Each model replica's own report of the adapters its engine holds (``LLMReplica.record_routing_stats``
    through Serve's replica actor: what the router routes by), by replica actor name."""
    import ray

    deployment = f"#{replica_deployment_name(stack.config.models[0])}#"
    named = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if deployment in a["name"]]
    reports = ray.get([ray.get_actor(n, namespace="serve").record_routing_stats.remote() for n in named], timeout=60)
    return {name: set(report[ROUTING_STAT_ADAPTERS]) for name, report in zip(named, reports, strict=True)}


def holders(adapter: str, held: dict[str, set[str]]) -> set[str]:
    return {replica for replica, names in held.items() if adapter in names}


Counters = dict[tuple[str, str, str], float]


def adapter_counters(metrics_url: str) -> Counters:
    """(metric, adapter, outcome) -> value, summed over Ray's own labels (one series per process)."""
    totals: Counters = {}
    for line in httpx.get(metrics_url, timeout=30).text.splitlines():
        if found := COUNTER.match(line):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', found[2]))
            key = (found[1], labels.get("adapter", ""), labels.get("outcome", ""))
            totals[key] = totals.get(key, 0.0) + float(found[3])
    return totals


def routed(counters: Counters, adapter: str) -> dict[str, float]:
    """The router's replica choices for ``adapter``, by outcome."""
    return {o: v for (m, a, o), v in counters.items() if m == "serve_app_adapter_routing" and a == adapter}
