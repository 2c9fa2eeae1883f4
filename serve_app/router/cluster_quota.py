"""Cluster-wide quotas on one router replica: its ledger (serve_app.core.quota), the bank it
settles with, and the sync loop.

The bank lives in a named Ray actor, one per app (``QuotaBankActor``); every router replica of the
app finds or creates it by name, so no new infrastructure is needed. A request is admitted from
the replica's leases without a remote call; only a shortfall calls the bank (once). If the bank
cannot be reached, a router replica falls back to its share of each limit
(``limit / router replicas`` per window) until it can: quotas stay bounded, never fail open.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from serve_app.core.quota import Charge, Grant, QuotaBank, QuotaKey, QuotaLedger, QuotaLimits, Report, window_index

logger = logging.getLogger("serve_app.router")
Clock = Callable[[], float]


class Bank(Protocol):
    def exchange(
        self,
        replica: str,
        now: float,
        reports: Mapping[QuotaKey, Report],
        needs: Mapping[QuotaKey, tuple[float, int]],
        oldest: Mapping[str, int] | None = None,
    ) -> Awaitable[dict[QuotaKey, Grant]]: ...

    def usage(self, windows: Mapping[str, int]) -> Awaitable[dict[str, dict[str, float]]]: ...


class LocalBank:
    """The bank in this process (unit tests; one router replica without Ray)."""

    def __init__(self, bank: QuotaBank | None = None) -> None:
        self.bank = bank or QuotaBank()

    async def exchange(
        self,
        replica: str,
        now: float,
        reports: Mapping[QuotaKey, Report],
        needs: Mapping[QuotaKey, tuple[float, int]],
        oldest: Mapping[str, int] | None = None,
    ) -> dict[QuotaKey, Grant]:
        return self.bank.exchange(replica, now, reports, needs, oldest)

    async def usage(self, windows: Mapping[str, int]) -> dict[str, dict[str, float]]:
        return self.bank.usage(windows)


class RayBank:
    """The bank in the app's named actor: ``exchange`` and ``usage`` are actor calls."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    async def exchange(
        self,
        replica: str,
        now: float,
        reports: Mapping[QuotaKey, Report],
        needs: Mapping[QuotaKey, tuple[float, int]],
        oldest: Mapping[str, int] | None = None,
    ) -> dict[QuotaKey, Grant]:
        grants: dict[QuotaKey, Grant] = await self.actor.exchange.remote(
            replica, now, dict(reports), dict(needs), oldest
        )
        return grants

    async def usage(self, windows: Mapping[str, int]) -> dict[str, dict[str, float]]:
        usage: dict[str, dict[str, float]] = await self.actor.usage.remote(dict(windows))
        return usage


BANK_NAMESPACE = "serve-app"


def bank_actor_name(app_name: str) -> str:
    return f"serve-app-quota-bank-{app_name}"


def ray_bank(app_name: str) -> RayBank:
    """The app's bank actor, created by the first router replica that asks (detached: it outlives a
    router replica, so a restart does not reset the window's usage; restarted if it dies)."""
    import ray

    actor_class = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(QuotaBank)
    actor = actor_class.options(
        name=bank_actor_name(app_name), namespace=BANK_NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote()
    return RayBank(actor)


@dataclass(frozen=True)
class QuotaRefusal:
    key: QuotaKey
    retry_after_s: int | None  # None: retrying cannot help (larger than the limit)


class ClusterQuota:
    def __init__(
        self,
        ledger: QuotaLedger,
        bank: Bank,
        replica: str,
        sync_interval_s: float,
        router_replicas: int,
        clock: Clock = time.time,
    ) -> None:
        self.ledger = ledger
        self.bank = bank
        self.replica = replica
        self.sync_interval_s = sync_interval_s
        self.router_replicas = router_replicas
        self.clock = clock
        self._fallback_used: dict[QuotaKey, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def admit(self, tenant: str, tokens: int) -> Charge | QuotaRefusal:
        self.start()
        now = self.clock()
        costs = self.ledger.costs(tenant, tokens, now)
        too_large = next((k for k, (amount, limit) in costs.items() if limit is not None and amount > limit), None)
        if too_large is not None:
            return QuotaRefusal(too_large, None)
        charge = self.ledger.take(tenant, tokens, costs)
        if charge is not None:
            return charge
        needs = self.ledger.shortfall(costs)
        grants = await self._acquire(needs, now)
        for key, grant in grants.items():
            self.ledger.add_lease(key, grant.granted)
        charge = self.ledger.take(tenant, tokens, costs)
        if charge is not None:
            return charge
        key = next(k for k in self.ledger.shortfall(costs))
        pending = grants.get(key)
        soon = pending is not None and pending.free_later >= costs[key][0]
        wait = math.ceil(self.sync_interval_s) if soon else self.ledger.window_end(key) - now
        return QuotaRefusal(key, max(1, math.ceil(wait)))

    def settle(self, charge: Charge, actual_tokens: int) -> None:
        self.ledger.settle(charge, actual_tokens)

    async def _acquire(self, needs: dict[QuotaKey, tuple[float, int]], now: float) -> dict[QuotaKey, Grant]:
        reports = self.ledger.report(now)
        try:
            return await self.bank.exchange(self.replica, now, reports, needs, self._oldest(now))
        except Exception:  # the bank is unreachable or restarting: this replica's share only
            logger.warning("quota bank unreachable; admitting from this router replica's share", exc_info=True)
            self.ledger.restore(reports)
            return {key: self._fallback(key, amount, limit) for key, (amount, limit) in needs.items()}

    def _fallback(self, key: QuotaKey, amount: float, limit: int) -> Grant:
        used = self._fallback_used.get(key, 0.0)
        if used + amount > limit / self.router_replicas:
            return Grant(0.0, 0.0)
        self._fallback_used[key] = used + amount
        return Grant(amount, 0.0)

    def _oldest(self, now: float) -> dict[str, int]:
        minute = window_index(now, self.ledger.minute_s) - 1
        return {"requests": minute, "tokens": minute, "tokens_day": window_index(now, self.ledger.day_s) - 1}

    def windows(self, now: float) -> dict[str, int]:
        minute = window_index(now, self.ledger.minute_s)
        return {"requests": minute, "tokens": minute, "tokens_day": window_index(now, self.ledger.day_s)}

    async def sync_once(self) -> None:
        now = self.clock()
        reports = self.ledger.report(now)
        try:
            await self.bank.exchange(self.replica, now, reports, {}, self._oldest(now))
        except Exception:
            self.ledger.restore(reports)
            logger.warning("quota bank sync failed; retrying next interval", exc_info=True)
            return
        self._fallback_used = {k: v for k, v in self._fallback_used.items() if k[2] >= self._oldest(now)[k[1]]}

    def start(self) -> None:
        """Starts the sync loop on the running event loop (the router's)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._sync_forever())

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sync_interval_s)
            await self.sync_once()

    async def usage(self) -> dict[str, dict[str, float]]:
        return await self.bank.usage(self.windows(self.clock()))


def quota_limits(tenants: Mapping[str, Any]) -> dict[str, QuotaLimits]:
    """Per tenant name, its quota limits (a TenantLimits of the config has the same fields)."""
    return {
        name: QuotaLimits(t.requests_per_minute, t.tokens_per_minute, t.tokens_per_day) for name, t in tenants.items()
    }
