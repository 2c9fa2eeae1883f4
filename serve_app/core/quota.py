"""Cluster-wide quotas by leases (pure): the bank every router replica settles with, and each
router replica's own ledger.

A quota key is (tenant, dimension, window): ``requests`` and ``tokens`` per minute window,
``tokens_day`` per day window; windows are aligned to the wall clock, so every router replica
names the same one. The bank (one per app, inside a named Ray actor) holds, per key, the usage
reported and the leases it granted; it grants only from ``limit - used - leases``, so the
pre-charges of all router replicas together never exceed the limit. A router replica admits a
request when its own leases cover the pre-charge (no remote call); when they do not it asks the
bank for more, once, and refuses (429) if the bank has none.

Every ``sync_interval_s`` a router replica reports, as deltas (which commute, so a report and a
grant in flight at once cannot lose each other): what it charged from its leases, the
settlements (actual usage minus the pre-charge, either sign), and leases it returns (those of
keys it did not use since the last report). Staleness: the bank's view of a router replica is at
most one sync interval (plus the call) old; the only way past a limit is a settlement above its
pre-charge (docs/flow-control.md states the bound).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

QuotaKey = tuple[str, str, int]  # (tenant, dimension, window index)
DIMENSIONS = ("requests", "tokens", "tokens_day")
# A report of one key: (charged from leases, settled, lease returned).
Report = tuple[float, float, float]


def window_index(now: float, window_s: float) -> int:
    return math.floor(now / window_s)


@dataclass(frozen=True)
class Grant:
    granted: float
    # What would be free if the other router replicas returned their leases: a refusal within it
    # may pass within one sync interval.
    free_later: float


@dataclass
class _BankEntry:
    used: float = 0.0
    leases: dict[str, float] = field(default_factory=dict)
    used_by_replica: dict[str, float] = field(default_factory=dict)


class QuotaBank:
    """The cluster's ledger (lives in one actor; its methods run one at a time)."""

    def __init__(self, replica_ttl_s: float = 10.0) -> None:
        self._entries: dict[QuotaKey, _BankEntry] = {}
        self._seen: dict[str, float] = {}
        self.replica_ttl_s = replica_ttl_s

    def exchange(
        self,
        replica: str,
        now: float,
        reports: Mapping[QuotaKey, Report],
        needs: Mapping[QuotaKey, tuple[float, int]],
        oldest: Mapping[str, int] | None = None,
    ) -> dict[QuotaKey, Grant]:
        """Apply ``replica``'s reports, then grant each need ``(amount, limit)`` in full or not at
        all; keys of windows before ``oldest[dimension]`` are forgotten first."""
        self._seen[replica] = now
        if oldest is not None:
            self.forget_before(oldest)
        for key, (charged, settled, returned) in reports.items():
            entry = self._entries.setdefault(key, _BankEntry())
            entry.used += charged + settled
            entry.used_by_replica[replica] = entry.used_by_replica.get(replica, 0.0) + charged + settled
            held = entry.leases.get(replica, 0.0) - charged - returned
            if held > 1e-9:
                entry.leases[replica] = held
            else:
                entry.leases.pop(replica, None)
        return {key: self._grant(replica, key, amount, limit, now) for key, (amount, limit) in needs.items()}

    def _grant(self, replica: str, key: QuotaKey, amount: float, limit: int, now: float) -> Grant:
        entry = self._entries.setdefault(key, _BankEntry())
        elsewhere = sum(v for r, v in entry.leases.items() if r != replica)
        free = limit - entry.used - sum(entry.leases.values())
        if free < amount:
            return Grant(0.0, free + elsewhere)
        # A share of what is free, so that a burst does not call here once per request, while
        # other router replicas still find some; whole units, so no fraction is left unusable.
        granted = min(free, max(amount, math.floor(free / (2 * self.active_replicas(now)))))
        entry.leases[replica] = entry.leases.get(replica, 0.0) + granted
        return Grant(granted, free - granted + elsewhere)

    def active_replicas(self, now: float) -> int:
        return max(1, sum(1 for seen in self._seen.values() if now - seen <= self.replica_ttl_s))

    def used(self, key: QuotaKey) -> float:
        entry = self._entries.get(key)
        return entry.used if entry else 0.0

    def used_by_replica(self, key: QuotaKey) -> dict[str, float]:
        entry = self._entries.get(key)
        return dict(entry.used_by_replica) if entry else {}

    def usage(self, windows: Mapping[str, int]) -> dict[str, dict[str, float]]:
        """Reported usage per tenant and dimension in the given windows."""
        out: dict[str, dict[str, float]] = {}
        for (tenant, dim, win), entry in self._entries.items():
            if windows.get(dim) == win:
                out.setdefault(tenant, {})[dim] = entry.used
        return out

    def forget_before(self, windows: Mapping[str, int]) -> None:
        """Drop keys of windows older than ``windows[dimension]`` (late reports for them are lost)."""
        stale = [k for k in self._entries if k[2] < windows.get(k[1], 0)]
        for key in stale:
            del self._entries[key]


@dataclass
class _Account:
    lease: float = 0.0
    charged: float = 0.0
    settled: float = 0.0
    returned: float = 0.0
    touched: bool = False


@dataclass(frozen=True)
class Charge:
    """What one admitted request pre-charged; settled once with its actual tokens."""

    tenant: str
    estimate: int
    keys: tuple[QuotaKey, ...]  # the token keys, settled by actual - estimate
    request_keys: tuple[QuotaKey, ...] = ()


@dataclass(frozen=True)
class QuotaLimits:
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None


class QuotaLedger:
    """One router replica's leases and unreported deltas (single event loop: no locks)."""

    def __init__(self, limits: Mapping[str, QuotaLimits], minute_s: float, day_s: float) -> None:
        self.limits = dict(limits)
        self.minute_s = minute_s
        self.day_s = day_s
        self._accounts: dict[QuotaKey, _Account] = {}

    def costs(self, tenant: str, tokens: int, now: float) -> dict[QuotaKey, tuple[float, int | None]]:
        """Every key this request charges: amount and limit (None: unlimited, counted for usage)."""
        limits = self.limits.get(tenant, QuotaLimits())
        minute, day = window_index(now, self.minute_s), window_index(now, self.day_s)
        wanted = (
            ("requests", minute, 1, limits.requests_per_minute),
            ("tokens", minute, tokens, limits.tokens_per_minute),
            ("tokens_day", day, tokens, limits.tokens_per_day),
        )
        return {(tenant, dim, win): (float(amount), limit) for dim, win, amount, limit in wanted}

    def shortfall(self, costs: Mapping[QuotaKey, tuple[float, int | None]]) -> dict[QuotaKey, tuple[float, int]]:
        """The limited keys whose lease here does not cover their cost."""
        return {
            k: (amount, limit)
            for k, (amount, limit) in costs.items()
            if limit is not None and self._account(k).lease + 1e-9 < amount
        }

    def take(self, tenant: str, tokens: int, costs: Mapping[QuotaKey, tuple[float, int | None]]) -> Charge | None:
        """Pre-charge every key (a limited one from its lease), or nothing when a lease falls short."""
        if self.shortfall(costs):
            return None
        for key, (amount, limit) in costs.items():
            account = self._account(key)
            if limit is not None:
                account.lease -= amount
            account.charged += amount
            account.touched = True
        token_keys = tuple(k for k in costs if k[1] != "requests")
        return Charge(tenant, tokens, token_keys, tuple(k for k in costs if k[1] == "requests"))

    def add_lease(self, key: QuotaKey, amount: float) -> None:
        self._account(key).lease += amount

    def settle(self, charge: Charge, actual_tokens: int) -> None:
        """Actual usage replaces the estimate: a refund when below, an extra charge when above."""
        for key in charge.keys:
            account = self._account(key)
            account.settled += actual_tokens - charge.estimate
            account.touched = True

    def cancel(self, charge: Charge) -> None:
        """A request admitted here but refused later (capacity, deadline) costs nothing."""
        self.settle(charge, 0)
        for key in charge.request_keys:
            account = self._account(key)
            account.settled -= 1
            account.touched = True

    def report(self, now: float) -> dict[QuotaKey, Report]:
        """The deltas since the last report (then zeroed); leases of untouched keys and of past
        windows go back to the bank."""
        current = {"requests": window_index(now, self.minute_s), "tokens": window_index(now, self.minute_s)}
        current["tokens_day"] = window_index(now, self.day_s)
        out: dict[QuotaKey, Report] = {}
        for key, account in list(self._accounts.items()):
            old = key[2] < current[key[1]]
            if not account.touched or old:
                account.returned += account.lease
                account.lease = 0.0
            if account.charged or account.settled or account.returned:
                out[key] = (account.charged, account.settled, account.returned)
            if old and key[2] < current[key[1]] - 1:
                del self._accounts[key]
            else:
                account.charged = account.settled = account.returned = 0.0
                account.touched = False
        return out

    def restore(self, reports: Mapping[QuotaKey, Report]) -> None:
        """A report the bank never received: its deltas go into the next one."""
        for key, (charged, settled, returned) in reports.items():
            account = self._account(key)
            account.charged += charged
            account.settled += settled
            account.returned += returned

    def window_end(self, key: QuotaKey) -> float:
        length = self.day_s if key[1] == "tokens_day" else self.minute_s
        return (key[2] + 1) * length

    def _account(self, key: QuotaKey) -> _Account:
        return self._accounts.setdefault(key, _Account())
