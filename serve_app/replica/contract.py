"""The one stream contract between the router and a replica (plain picklable data; no Ray, no vLLM).

The router sends a list of HTTP requests (a router batch; one request is the smallest batch) to
``LLMReplica.stream``. The replica answers each with vLLM's own OpenAI server and streams back
lists of events, one list per Ray message: what every request of the batch produced since the
last message (typically one engine step). Each request's events are its response as vLLM wrote
it: a ``ResponseStart`` (status and headers, sent together with the first body bytes, so that a
replica lost before the first byte can be retried elsewhere), ``ResponseBody`` chunks, and one
``ResponseEnd``, which ends that request whatever the rest of its batch does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The header on a replica's answer to a relayed /v1/load_lora_adapter that names the replica (its
# Serve replica id): the router records it in the app's adapter catalog and drops it from the answer.
LOADED_ON_HEADER = b"x-serve-app-loaded-on"


@dataclass(frozen=True, slots=True)
class RelayRequest:
    """One client request to be answered by the replica's vLLM server, bytes unchanged."""

    request_id: str
    path: str
    body: bytes
    method: str = "POST"
    headers: tuple[tuple[bytes, bytes], ...] = ((b"content-type", b"application/json"),)
    # Replica choice and admission read these (serve_app.router.replica_choice): the prompt text
    # for prefix affinity, and the expected work in tokens.
    routing_text: str = ""
    cost_hint: int = 1
    # The LoRA adapter the request names ("" for the base): adapter affinity routes by it; for an
    # adapter added at run time, ``adapter_path`` is where a replica that lacks it loads it from.
    adapter: str = ""
    adapter_path: str = ""
    # The model replica the app's catalog recorded a run-time load of ``adapter`` on (recently:
    # serve_app.core.adapter_catalog.Placement): replica choice counts it as holding the adapter,
    # in every router replica, before its polled routing stats can say so. "" when none.
    adapter_replica: str = ""
    # Set on a relayed /v1/load_lora_adapter: the adapter it loads. Replica choice places the load
    # where it would place a request naming that adapter, without counting it as one (the name is
    # not served until the load succeeds).
    loads_adapter: str = ""


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class ResponseStart:
    index: int
    status: int
    headers: tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class ResponseBody:
    index: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ResponseEnd:
    """The request's last event. ``error`` is set when it ended without a complete answer (the
    replica or engine failed, it was cancelled); ``status`` then says how the router answers if
    nothing was sent yet."""

    index: int
    usage: Usage = field(default_factory=Usage)
    error: str | None = None
    status: int = 200


Event = ResponseStart | ResponseBody | ResponseEnd


@dataclass(frozen=True, slots=True)
class BatchOpened:
    """The first message of a stream of several requests: the replica serving it, where a
    cancellation of some of its requests must go."""

    replica_id: str


@dataclass(frozen=True, slots=True)
class CancelRequests:
    """Abort these requests of a running batch on one replica (their clients went away while the
    rest of the batch goes on). The replica choice sends the call to ``target_replica_id``."""

    target_replica_id: str
    request_ids: tuple[str, ...]
