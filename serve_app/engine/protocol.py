"""The interface a replica drives. VllmEngine implements it for real; FakeEngine for fast tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from serve_app.engine.types import (
    EmbeddingRequest,
    EmbeddingResult,
    EngineStats,
    GenerationChunk,
    GenerationRequest,
)


class Engine(Protocol):
    async def start(self) -> None:
        """Load weights and become able to serve; raises if that is impossible."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream one completion. Raises EngineRequestError for a request it cannot serve."""
        ...

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult: ...

    async def abort(self, request_id: str) -> None: ...

    async def check_health(self) -> None:
        """Raise EngineDeadError when the engine can no longer serve."""

    def stats(self) -> EngineStats: ...

    async def shutdown(self) -> None: ...
