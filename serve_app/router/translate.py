"""OpenAI requests -> engine requests, and engine chunks -> OpenAI responses (pure)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from serve_app.config import ModelConfig
from serve_app.engine.types import GenerationChunk, GenerationRequest, SamplingOptions
from serve_app.observability.logs import choice_request_id
from serve_app.router.errors import OpenAIError
from serve_app.router.openai_types import ChatCompletionRequest, CompletionRequest, GenerateRequest, usage

ApiRequest = ChatCompletionRequest | CompletionRequest


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _max_tokens(requested: int | None, model: ModelConfig, param: str = "max_tokens") -> int:
    if requested is None:
        return model.default_max_tokens
    if requested > model.max_tokens_limit:
        raise OpenAIError(
            400, f"{param} {requested} exceeds this server's limit of {model.max_tokens_limit}", param=param
        )
    return requested


def _check_unsupported(req: ApiRequest, model: ModelConfig) -> None:
    if req.n > model.max_n:
        raise OpenAIError(400, f"n must be at most {model.max_n}", param="n")
    if req.logprobs:
        raise OpenAIError(400, "logprobs are not supported by this server", param="logprobs")
    if isinstance(req, CompletionRequest) and req.echo:
        raise OpenAIError(400, "echo is not supported by this server", param="echo")


def sampling_options(req: ApiRequest, model: ModelConfig) -> SamplingOptions:
    max_tokens = _max_tokens(req.requested_max_tokens(), model)
    return SamplingOptions(
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        stop=req.stop_list(),
        seed=req.seed,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        repetition_penalty=req.repetition_penalty,
        top_k=req.top_k,
        min_tokens=min(req.min_tokens, max_tokens),
        ignore_eos=req.ignore_eos,
    )


def engine_requests(req: ApiRequest, model: ModelConfig, request_id: str) -> list[GenerationRequest]:
    """One engine request per choice; with a seed, choice i uses seed + i so choices differ."""
    _check_unsupported(req, model)
    base = sampling_options(req, model)
    messages = None
    prompt = None
    if isinstance(req, ChatCompletionRequest):
        messages = tuple({"role": m.role, "content": m.text()} for m in req.messages)
        if not any(m["content"] for m in messages):
            raise OpenAIError(400, "messages hold no text", param="messages")
    else:
        prompt = req.prompt_text()
        if not prompt:
            raise OpenAIError(400, "prompt must not be empty", param="prompt")
    out = []
    for i in range(req.n):
        sampling = base if base.seed is None or i == 0 else _with_seed(base, base.seed + i)
        out.append(
            GenerationRequest(choice_request_id(request_id, i), model.id, sampling, prompt=prompt, messages=messages)
        )
    return out


def _with_seed(s: SamplingOptions, seed: int) -> SamplingOptions:
    from dataclasses import replace

    return replace(s, seed=seed)


def generate_request(req: GenerateRequest, model: ModelConfig, request_id: str) -> GenerationRequest:
    requested = req.max_new_tokens
    if "max_new_tokens" not in req.model_fields_set:
        requested = min(requested, model.max_tokens_limit)  # the API's default must not fail on a lower limit
    sampling = SamplingOptions(max_tokens=_max_tokens(requested, model, "max_new_tokens"), temperature=req.temperature)
    return GenerationRequest(choice_request_id(request_id, 0), model.id, sampling, prompt=req.prompt)


@dataclass
class ChoiceState:
    """Accumulates one choice's chunks (for non-streaming answers and final usage)."""

    text: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None

    def add(self, chunk: GenerationChunk) -> None:
        self.text.append(chunk.text)
        self.prompt_tokens = chunk.prompt_tokens or self.prompt_tokens
        self.completion_tokens = chunk.completion_tokens
        self.finish_reason = chunk.finish_reason or self.finish_reason

    @property
    def full_text(self) -> str:
        return "".join(self.text)


def total_usage(states: list[ChoiceState]) -> dict[str, int]:
    prompt = states[0].prompt_tokens if states else 0
    return usage(prompt, sum(s.completion_tokens for s in states))


def chat_response(rid: str, model: str, states: list[ChoiceState]) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": s.full_text},
                "finish_reason": s.finish_reason,
                "logprobs": None,
            }
            for i, s in enumerate(states)
        ],
        "usage": total_usage(states),
    }


def completion_response(rid: str, model: str, states: list[ChoiceState]) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "text": s.full_text, "finish_reason": s.finish_reason, "logprobs": None}
            for i, s in enumerate(states)
        ],
        "usage": total_usage(states),
    }


class StreamFormatter:
    """Turns chunks into SSE events of one response (chat or completion)."""

    def __init__(self, kind: str, rid: str, model: str) -> None:
        self.chat = kind == "chat"
        self.rid = rid
        self.model = model
        self.created = int(time.time())
        self._role_sent: set[int] = set()

    def _event(self, choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> str:
        body = {
            "id": self.rid,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if extra:
            body.update(extra)
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def chunk(self, chunk: GenerationChunk) -> str | None:
        if not chunk.text and chunk.finish_reason is None and chunk.index in self._role_sent:
            return None
        if self.chat:
            delta: dict[str, Any] = {}
            if chunk.index not in self._role_sent:
                delta["role"] = "assistant"
                self._role_sent.add(chunk.index)
            if chunk.text:
                delta["content"] = chunk.text
            choice = {"index": chunk.index, "delta": delta, "finish_reason": chunk.finish_reason, "logprobs": None}
        else:
            choice = {"index": chunk.index, "text": chunk.text, "finish_reason": chunk.finish_reason, "logprobs": None}
        return self._event([choice])

    def usage_event(self, states: list[ChoiceState]) -> str:
        return self._event([], {"usage": total_usage(states)})

    @staticmethod
    def done() -> str:
        return "data: [DONE]\n\n"
