"""Plain data an engine reports (picklable; no Ray, no vLLM)."""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.errors import ServeAppError


class EngineDeadError(ServeAppError, RuntimeError):
    """The engine can no longer serve any request."""


@dataclass(frozen=True)
class EngineStats:
    """What autoscaling and routing read from an engine."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    prefix_cache_hit_rate: float = 0.0
