"""Plain per-request data shared by the load generator and the statistics (no I/O here)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# Error kinds; HTTP failures are "http_<status>", e.g. "http_429".
TIMEOUT = "timeout"
CONNECTION = "connection"
CUT_STREAM = "cut_stream"  # the stream ended (or broke) before "data: [DONE]"
STREAM_ERROR = "stream_error"  # the server sent an error event inside a 200 stream
NO_TOKENS = "no_tokens"  # a complete answer that carried no token chunk (TTFT undefined)
BAD_RESPONSE = "bad_response"  # a body that is not the expected JSON
CLIENT_CUT = "client_cut"  # the client itself closed the stream after some chunks (disconnect tests)


def http_error_kind(status: int) -> str:
    return f"http_{status}"


def is_openai_error(error: Any) -> bool:
    """An OpenAI-style error object: ``{"message": str, ...}`` (the value under ``"error"``)."""
    return isinstance(error, dict) and isinstance(error.get("message"), str) and bool(error["message"])


def is_openai_error_body(body: str) -> bool:
    """A response body that is ``{"error": {"message": ...}}``: an error a client can act on."""
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and is_openai_error(data.get("error"))


@dataclass(frozen=True)
class Prompt:
    """One request's input. Exactly one of ``text`` and ``messages`` is set."""

    prompt_tokens: int
    max_tokens: int
    text: str | None = None
    messages: tuple[dict[str, str], ...] | None = None

    def as_text(self) -> str:
        """The prompt for text endpoints; chat prompts are flattened into a plain transcript."""
        if self.text is not None:
            return self.text
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in self.messages or ()]
        return "\n".join([*lines, "Assistant:"])

    def as_messages(self) -> list[dict[str, str]]:
        if self.messages is not None:
            return [dict(m) for m in self.messages]
        return [{"role": "user", "content": self.text or ""}]


@dataclass
class RequestRecord:
    """What one request measured. Times are seconds; ``start_s`` counts from the run's start.

    Definitions follow vLLM's benchmark: the clock starts just before the request is sent,
    ``ttft_s`` ends at the first chunk carrying ``choices``, every later such chunk adds one
    inter-token latency, and ``latency_s`` ends at the last such chunk (not at ``[DONE]``).
    Without streaming, ``ttft_s`` stays ``None`` and ``latency_s`` is the whole exchange.
    """

    index: int
    prompt_tokens: int
    max_tokens: int
    start_s: float = 0.0
    queue_s: float = 0.0  # waiting for a concurrency slot after the scheduled arrival
    ttft_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    latency_s: float = 0.0
    output_tokens: int = 0
    output_tokens_source: str = ""  # usage | tokenizer | chunks | estimate
    output_text: str = ""
    success: bool = False
    error_kind: str | None = None
    error: str = ""
    # What the fault ledger (serve_app.bench.ledger) checks: the X-Request-Id sent (when set) and
    # the one the server echoed, the status and Retry-After header, whether a stream reached
    # "data: [DONE]", and whether an error (HTTP body or stream event) was an OpenAI error object.
    request_id: str = ""
    echoed_request_id: str | None = None
    http_status: int | None = None
    retry_after: str | None = None
    stream_done: bool = False
    openai_error: bool = False

    def fail(self, kind: str, detail: str) -> None:
        self.success = False
        self.error_kind = kind
        self.error = detail[:500]

    def to_json(self, include_text: bool = False) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "output_text"}
        if include_text:
            data["output_text"] = self.output_text
        return data
