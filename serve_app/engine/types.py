"""Plain data passed between router, replica and engine (picklable; no Ray, no vLLM)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RequestError:
    """An error for one request, in OpenAI's error vocabulary."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None


class EngineRequestError(Exception):
    """Raised by an engine when one request cannot be served; carries the client-facing error."""

    def __init__(self, error: RequestError) -> None:
        super().__init__(error.message)
        self.error = error


class EngineDeadError(RuntimeError):
    """The engine can no longer serve any request."""


@dataclass(frozen=True)
class SamplingOptions:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    top_k: int = -1
    min_tokens: int = 0
    ignore_eos: bool = False


@dataclass(frozen=True)
class GenerationRequest:
    """One completion to produce. Exactly one of ``prompt`` and ``messages`` is set."""

    request_id: str
    model: str
    sampling: SamplingOptions
    prompt: str | None = None
    messages: tuple[dict[str, Any], ...] | None = None

    @property
    def cost_hint(self) -> int:
        """Expected work in tokens before tokenization (~4 characters a token)."""
        text_len = len(self.prompt or "") + sum(len(str(m.get("content") or "")) for m in self.messages or ())
        return text_len // 4 + self.sampling.max_tokens

    @property
    def routing_text(self) -> str:
        if self.prompt is not None:
            return self.prompt
        return "\n".join(f"{m.get('role')}:{m.get('content')}" for m in self.messages or ())


@dataclass
class GenerationChunk:
    """A streamed piece of one completion: new text since the last chunk plus running counts."""

    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    error: RequestError | None = None
    # index of the request inside a router batch; 0 outside batches
    index: int = 0


def merge_chunks(chunks: list[GenerationChunk]) -> list[GenerationChunk]:
    """Merge the chunks of each request (text joined, latest counts), keeping each request's
    order; an error chunk is never merged, so it stays the last item of its request."""
    merged: list[GenerationChunk] = []
    open_by_index: dict[int, GenerationChunk] = {}
    for chunk in chunks:
        target = open_by_index.get(chunk.index)
        if chunk.error is None and target is not None:
            target.text += chunk.text
            target.prompt_tokens = chunk.prompt_tokens or target.prompt_tokens
            target.completion_tokens = chunk.completion_tokens
            target.finish_reason = chunk.finish_reason or target.finish_reason
            continue
        merged.append(chunk)
        if chunk.error is None:
            open_by_index[chunk.index] = chunk
        else:
            open_by_index.pop(chunk.index, None)
    return merged


@dataclass(frozen=True)
class EmbeddingRequest:
    request_id: str
    model: str
    inputs: tuple[str, ...]

    @property
    def cost_hint(self) -> int:
        """Expected work in tokens before tokenization (~4 characters a token, at least 1 an input)."""
        return sum(len(text) // 4 + 1 for text in self.inputs)


@dataclass
class EmbeddingResult:
    vectors: list[list[float]] = field(default_factory=list)
    prompt_tokens: int = 0
    error: RequestError | None = None


@dataclass(frozen=True)
class EngineStats:
    """What autoscaling and routing read from an engine."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    prefix_cache_hit_rate: float = 0.0


@dataclass(frozen=True)
class BatchOpened:
    """The first message of a router batch's stream: the replica serving it, where a
    cancellation of some of its requests must go."""

    replica_id: str


@dataclass(frozen=True)
class CancelRequests:
    """Abort these requests of running batches on one replica (their clients went away while the
    rest of the batch goes on). The replica router sends the call to ``target_replica_id``."""

    target_replica_id: str
    request_ids: tuple[str, ...]
