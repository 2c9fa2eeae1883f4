"""OpenAI-compatible request bodies (validated strictly) and the simple /generate API.

Requests reject unknown fields: a misspelt parameter silently ignored is a worse failure for a
client than a clear 400 naming it. Types are strict for the same reason:
``"5"``, ``true`` or ``2.0`` where an integer belongs is an error, not a silent coercion.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 256


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, max_length=256)

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


def _check_stop(stop: str | list[str] | None) -> list[str]:
    items = [stop] if isinstance(stop, str) else list(stop or [])
    if len(items) > MAX_STOP_SEQUENCES:
        raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
    for s in items:
        if not s or len(s) > MAX_STOP_CHARS:
            raise ValueError(f"each stop sequence must have 1 to {MAX_STOP_CHARS} characters")
    return items


class _SamplingFields(_Strict):
    model: str = Field(..., min_length=1, max_length=256)
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1)] = 1
    stop: str | list[str] | None = None
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    user: str | None = Field(None, max_length=256)
    # vLLM-compatible extensions (sent by vLLM's own benchmark client, among others).
    repetition_penalty: Annotated[float, Field(gt=0.0, le=2.0)] = 1.0
    top_k: Annotated[int, Field(ge=-1, le=1000)] = -1
    min_tokens: Annotated[int, Field(ge=0)] = 0
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        _check_stop(stop)
        return stop

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    def stop_list(self) -> tuple[str, ...]:
        return tuple(_check_stop(self.stop))


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=1024)
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] = Field(...)
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and len(prompt) != 1:
            raise ValueError("exactly one prompt per request is supported; send several requests for several prompts")
        return prompt

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


class GenerateRequest(_Strict):
    """The simple API: ``POST /generate {prompt, max_new_tokens} -> {text}`` (greedy by default)."""

    prompt: str = Field(..., min_length=1)
    max_new_tokens: Annotated[int, Field(ge=1)] = 64
    model: str | None = Field(None, min_length=1, max_length=256)
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0


class GenerateResponse(BaseModel):
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None


class EmbeddingRequest(_Strict):
    model: str = Field(..., min_length=1, max_length=256)
    input: str | list[str] = Field(...)
    encoding_format: Literal["float"] = "float"
    user: str | None = Field(None, max_length=256)

    @field_validator("input")
    @classmethod
    def _inputs(cls, value: str | list[str]) -> str | list[str]:
        items = [value] if isinstance(value, str) else value
        if not items or len(items) > 2048:
            raise ValueError("input must hold 1 to 2048 strings")
        if any(not s for s in items):
            raise ValueError("input strings must not be empty")
        return value

    def inputs(self) -> tuple[str, ...]:
        return (self.input,) if isinstance(self.input, str) else tuple(self.input)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def model_card(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "serve-app"}
