"""The interface a replica drives. VllmEngine implements it for real; FakeEngine for fast tests."""

from __future__ import annotations

from typing import Any, Protocol

from serve_app.engine.types import EngineStats


class Engine(Protocol):
    # The OpenAI server over this engine, as an ASGI app (vLLM's own for VllmEngine); set by start().
    app: Any

    async def start(self) -> None:
        """Load weights, build the server and become able to serve; raises if that is impossible."""

    async def check_health(self) -> None:
        """Raise EngineDeadError when the engine can no longer serve."""

    def stats(self) -> EngineStats: ...

    async def loaded_adapters(self) -> list[str]:
        """The LoRA adapters the engine holds loaded now (bounded by its adapter cache)."""
        ...

    async def shutdown(self) -> None: ...
