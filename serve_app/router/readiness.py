"""``/ready``: every model answers a real short greedy generation (cached briefly: probes cost work)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from serve_app.config_model import HealthConfig
from serve_app.router.client import ReplicaClient

_READY_CACHE_S = 5.0


@dataclass
class ReadinessState:
    checked_at: float = 0.0
    ready: bool = False
    detail: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProbeTarget:
    """A model to probe: its id and health part (built in serve_app.router.models)."""

    model_id: str
    health: HealthConfig
    scales_to_zero: bool  # min_replicas 0: never probed (see _probe)


class Readiness:
    def __init__(self, targets: Sequence[ProbeTarget], client: ReplicaClient) -> None:
        self.targets = tuple(targets)
        self.client = client
        self._state = ReadinessState()
        self._lock = asyncio.Lock()

    async def check(self) -> ReadinessState:
        async with self._lock:
            state = self._state
            if state.ready and time.monotonic() - state.checked_at < _READY_CACHE_S:
                return state
            results = await asyncio.gather(*(self._probe(t) for t in self.targets))
            detail = dict(zip((t.model_id for t in self.targets), results, strict=True))
            self._state = ReadinessState(time.monotonic(), all(v == "ok" for v in detail.values()), detail)
            return self._state

    async def _probe(self, target: ProbeTarget) -> str:
        if target.scales_to_zero:
            # Scale to zero: a probe is a request, so probing would start a replica and keep it
            # from ever scaling back down. The model serves whenever asked: its requests wait in
            # Ray Serve's handle queue (under admission and the request deadline) while the
            # autoscaler starts a replica (serve_app.core.autoscaling, "cold_start").
            return "ok"
        health = target.health
        try:
            answer = await asyncio.wait_for(
                self.client.probe(target.model_id, health.readiness_prompt), timeout=health.readiness_timeout_s
            )
        except TimeoutError:
            return f"no answer within {health.readiness_timeout_s:g} s"
        except Exception as err:
            return f"probe failed: {type(err).__name__}: {err}"[:300]
        if not answer.strip():
            return "empty answer"
        if health.readiness_expect and health.readiness_expect.lower() not in answer.lower():
            return f"answer {answer[:80]!r} lacks {health.readiness_expect!r}"
        return "ok"
