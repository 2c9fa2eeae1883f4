"""A deterministic in-process engine behind the Engine interface, for fast unit tests of the
router, batching and translation. It never stands in for vLLM in integration tests."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

from serve_app.engine.types import (
    EmbeddingRequest,
    EmbeddingResult,
    EngineDeadError,
    EngineRequestError,
    EngineStats,
    GenerationChunk,
    GenerationRequest,
    RequestError,
)

_VOCAB = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta")


class FakeEngine:
    """Tokens are whitespace-separated words; the reply is a pure function of the prompt and seed."""

    def __init__(self, max_model_len: int = 2048, token_delay_s: float = 0.0, fail_on: str | None = None):
        self.max_model_len = max_model_len
        self.token_delay_s = token_delay_s
        self.fail_on = fail_on
        self.dead = False
        self.running: set[str] = set()
        self.aborted: list[str] = []
        self.started = False

    async def start(self) -> None:
        self.started = True

    def _prompt_tokens(self, request: GenerationRequest) -> list[str]:
        if request.prompt is not None:
            return request.prompt.split()
        return [w for m in request.messages or () for w in str(m.get("content") or "").split()]

    def _reply(self, request: GenerationRequest) -> list[str]:
        digest = hashlib.sha256(f"{request.routing_text}|{request.sampling.seed}".encode()).digest()
        return [_VOCAB[b % len(_VOCAB)] for b in digest]

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if self.dead:
            raise EngineDeadError("fake engine is dead")
        prompt = self._prompt_tokens(request)
        if len(prompt) + request.sampling.max_tokens > self.max_model_len:
            raise EngineRequestError(
                RequestError(400, f"prompt of {len(prompt)} tokens exceeds max_model_len", param="messages")
            )
        if self.fail_on is not None and self.fail_on in request.routing_text:
            raise EngineRequestError(RequestError(500, "injected engine failure", type="server_error"))
        self.running.add(request.request_id)
        try:
            words = self._reply(request)
            limit = min(request.sampling.max_tokens, len(words))
            for i in range(limit):
                if self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s)
                done = i == limit - 1
                yield GenerationChunk(
                    text=(" " if i else "") + words[i],
                    prompt_tokens=len(prompt),
                    completion_tokens=i + 1,
                    finish_reason=("length" if limit == request.sampling.max_tokens else "stop") if done else None,
                )
        finally:
            self.running.discard(request.request_id)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        vectors = []
        for text in request.inputs:
            digest = hashlib.sha256(text.encode()).digest()
            vectors.append([b / 255.0 for b in digest[:8]])
        return EmbeddingResult(vectors=vectors, prompt_tokens=sum(len(t.split()) for t in request.inputs))

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)
        self.running.discard(request_id)

    async def check_health(self) -> None:
        if self.dead:
            raise EngineDeadError("fake engine is dead")

    def stats(self) -> EngineStats:
        return EngineStats(running=len(self.running))

    async def shutdown(self) -> None:
        self.dead = True
