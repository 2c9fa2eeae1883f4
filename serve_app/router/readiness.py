"""``/ready``: every model answers a real short greedy generation (cached briefly: probes cost work)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from serve_app.config import AppConfig, ModelConfig
from serve_app.router.client import ReplicaClient

_READY_CACHE_S = 5.0


@dataclass
class ReadinessState:
    checked_at: float = 0.0
    ready: bool = False
    detail: dict[str, str] = field(default_factory=dict)


class Readiness:
    def __init__(self, config: AppConfig, client: ReplicaClient) -> None:
        self.config = config
        self.client = client
        self._state = ReadinessState()
        self._lock = asyncio.Lock()

    async def check(self) -> ReadinessState:
        async with self._lock:
            state = self._state
            if state.ready and time.monotonic() - state.checked_at < _READY_CACHE_S:
                return state
            results = await asyncio.gather(*(self._probe(m) for m in self.config.models))
            detail = dict(zip((m.id for m in self.config.models), results, strict=True))
            self._state = ReadinessState(time.monotonic(), all(v == "ok" for v in detail.values()), detail)
            return self._state

    async def _probe(self, model: ModelConfig) -> str:
        if model.autoscaling is not None and model.autoscaling.min_replicas == 0:
            # Scale to zero: a probe is a request, so probing would start a replica and keep it
            # from ever scaling back down. The model serves whenever asked: its requests wait in
            # Ray Serve's handle queue (under admission and the request deadline) while the
            # autoscaler starts a replica (serve_app.core.autoscaling, "cold_start").
            return "ok"
        try:
            answer = await asyncio.wait_for(
                self.client.probe(model.id, model.readiness_prompt), timeout=model.readiness_timeout_s
            )
        except TimeoutError:
            return f"no answer within {model.readiness_timeout_s:g} s"
        except Exception as err:
            return f"probe failed: {type(err).__name__}: {err}"[:300]
        if not answer.strip():
            return "empty answer"
        if model.readiness_expect and model.readiness_expect.lower() not in answer.lower():
            return f"answer {answer[:80]!r} lacks {model.readiness_expect!r}"
        return "ok"
