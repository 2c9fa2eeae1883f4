"""The engine's own order for a request: vLLM's priority scheduling, set from the request's class.

A model whose ``engine_options`` set ``scheduling_policy: priority`` runs vLLM's priority scheduler:
it takes waiting requests lowest ``priority`` first (ties by arrival) and, when the KV cache runs
out, preempts the running request with the highest value. The router's flow queue decides what
reaches the replica; this decides the order inside the engine once it has more than it can run.

The rule: on such a model the router writes ``priority`` into every generation request's body,
from the request's effective class (its key's, or lower through the ``x-priority`` header); a
client's own ``priority`` is overwritten, so no body lifts a request above its class. vLLM also
reads an ``X-Vllm-Priority`` header, which overrides the body; the router sends replicas no client
header, so that one never reaches the engine. A model on vLLM's default ``fcfs`` policy gets the
body unchanged: its scheduler ignores ``priority``. Pure: no Ray, no vLLM.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# vLLM's request types with a ``priority`` field that the router relays (its OpenAI protocol).
PRIORITY_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings"})
# The request's class index (serve_app.config_tenants.PRIORITY_ORDER: interactive 0, batch 1) is
# its engine priority: vLLM serves the lower value first.
INTERACTIVE = 0


def uses_priority_scheduling(engine_options: Mapping[str, Any]) -> bool:
    """Whether the model's engine orders requests by ``priority`` (vLLM's ``scheduling_policy``)."""
    return engine_options.get("scheduling_policy") == "priority"


def engine_priority(class_index: int | None) -> int:
    """vLLM's ``priority`` for a request of this class; None (no flow control): interactive."""
    return INTERACTIVE if class_index is None else class_index


def stamp_priority(payload: dict[str, Any], path: str, class_index: int | None) -> dict[str, Any] | None:
    """The body to send with the router's ``priority`` in it, or None when it goes unchanged (a path
    without the field, or the router's value already there)."""
    if path not in PRIORITY_PATHS:
        return None
    value = engine_priority(class_index)
    current = payload.get("priority")
    if type(current) is int and current == value:
        return None
    return payload | {"priority": value}
