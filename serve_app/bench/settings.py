"""Typed settings of one benchmark run: what to call (:class:`Target`) and how hard (:class:`LoadPlan`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Endpoint = Literal["chat", "completions", "generate"]

ENDPOINT_PATHS: dict[str, str] = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "generate": "/generate",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Target(_Strict):
    """The server and the request shape."""

    url: str = Field(..., min_length=1, pattern=r"^https?://")
    model: str = Field(..., min_length=1)
    endpoint: Endpoint = "chat"
    stream: bool = True
    timeout_s: float = Field(600.0, gt=0)
    # vLLM's extension (also served by this project's router): keep decoding past EOS so every
    # request produces exactly max_tokens, which makes runs comparable.
    ignore_eos: bool = False
    temperature: float | None = Field(None, ge=0.0, le=2.0)

    @model_validator(mode="after")
    def _generate_does_not_stream(self) -> Target:
        if self.endpoint == "generate" and self.stream:
            raise ValueError("the /generate endpoint does not stream; use --no-stream")
        return self

    @property
    def request_url(self) -> str:
        """``url`` may be the server root or already the full endpoint URL."""
        path = ENDPOINT_PATHS[self.endpoint]
        base = self.url.rstrip("/")
        return base if base.endswith(path) else base + path


class LoadPlan(_Strict):
    """Arrivals: all at once under a concurrency cap, or a Poisson process of ``rate`` requests/s
    (optionally also capped). Length: a request count, or a duration after which no new request
    starts (those in flight finish and count)."""

    concurrency: int | None = Field(None, ge=1)
    rate: float | None = Field(None, gt=0)
    num_requests: int | None = Field(None, ge=1)
    duration_s: float | None = Field(None, gt=0)
    warmup_requests: int = Field(1, ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _one_of_each(self) -> LoadPlan:
        if self.concurrency is None and self.rate is None:
            raise ValueError("give a concurrency, a request rate, or both")
        if (self.num_requests is None) == (self.duration_s is None):
            raise ValueError("give exactly one of num_requests and duration_s")
        return self

    @property
    def label(self) -> str:
        parts = []
        if self.concurrency is not None:
            parts.append(f"c={self.concurrency}")
        if self.rate is not None:
            parts.append(f"rate={self.rate:g}/s")
        return " ".join(parts)
