"""Per-client rate limits: token buckets on requests and on estimated tokens per minute (pure).

Each client has two buckets that refill continuously at ``limit / 60`` per second and hold at
most one minute's worth, so a client may burst up to its per-minute limit and then proceeds at the
limit's rate. A request passes only if both buckets can pay for it; a refused request costs
nothing, and its ``retry_after_s`` is when both buckets will hold enough.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]

# Refill arithmetic in floats leaves e.g. 0.9999999 of a token after exactly one refill interval.
_EPSILON = 1e-9


@dataclass
class TokenBucket:
    capacity: float
    refill_per_s: float
    level: float
    updated_at: float

    @classmethod
    def per_minute(cls, limit: int, now: float) -> TokenBucket:
        return cls(capacity=float(limit), refill_per_s=limit / 60.0, level=float(limit), updated_at=now)

    def refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated_at)
        self.level = min(self.capacity, self.level + elapsed * self.refill_per_s)
        self.updated_at = now

    def wait_s(self, amount: float) -> float:
        """Seconds until ``amount`` is available (0 when it is now); call after ``refill``."""
        return max(0.0, amount - self.level - _EPSILON) / self.refill_per_s

    def take(self, amount: float) -> None:
        self.level -= amount


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    # Whole seconds to wait before retrying (at least 1 when refused); None when retrying cannot help.
    retry_after_s: int | None = None
    # Which limit refused it: "requests", "tokens", or "too_large" (more tokens than a minute's worth).
    reason: str = ""


@dataclass
class _ClientBuckets:
    requests: TokenBucket | None
    tokens: TokenBucket | None


class KeyedRateLimiter:
    """Token buckets per client key. At most ``max_clients`` clients are tracked; past that the
    least recently seen is forgotten (in practice a full bucket, which a new one equals)."""

    def __init__(
        self,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
        clock: Clock = time.monotonic,
        max_clients: int = 10_000,
    ) -> None:
        if requests_per_minute is None and tokens_per_minute is None:
            raise ValueError("a rate limiter needs a request or a token limit")
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.clock = clock
        self.max_clients = max_clients
        self._clients: OrderedDict[str, _ClientBuckets] = OrderedDict()

    @property
    def limits_tokens(self) -> bool:
        return self.tokens_per_minute is not None

    @property
    def tracked_clients(self) -> int:
        return len(self._clients)

    def _buckets(self, client: str, now: float) -> _ClientBuckets:
        buckets = self._clients.get(client)
        if buckets is None:
            buckets = _ClientBuckets(
                TokenBucket.per_minute(self.requests_per_minute, now) if self.requests_per_minute else None,
                TokenBucket.per_minute(self.tokens_per_minute, now) if self.tokens_per_minute else None,
            )
            self._clients[client] = buckets
            while len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(client)
        return buckets

    def check(self, client: str, tokens: int = 0) -> RateDecision:
        """Admit one request of ``tokens`` estimated tokens for ``client``, or say how long to wait."""
        now = self.clock()
        buckets = self._buckets(client, now)
        waits: dict[str, float] = {}
        if buckets.tokens is not None:
            if tokens > buckets.tokens.capacity:
                return RateDecision(False, None, "too_large")
            buckets.tokens.refill(now)
            waits["tokens"] = buckets.tokens.wait_s(tokens)
        if buckets.requests is not None:
            buckets.requests.refill(now)
            waits["requests"] = buckets.requests.wait_s(1)
        reason, wait = max(waits.items(), key=lambda item: item[1])
        if wait > 0:
            return RateDecision(False, max(1, math.ceil(wait)), reason)
        if buckets.tokens is not None:
            buckets.tokens.take(tokens)
        if buckets.requests is not None:
            buckets.requests.take(1)
        return RateDecision(True)
