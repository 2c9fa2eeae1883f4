"""Cluster-wide quotas by leases (serve_app.core.quota): bank and ledger together, no Ray."""

from __future__ import annotations

import pytest

from serve_app.core.quota import Charge, QuotaBank, QuotaLedger, QuotaLimits

LIMITS = {"a": QuotaLimits(tokens_per_minute=1000, requests_per_minute=50), "b": QuotaLimits(tokens_per_minute=1000)}


class Router:
    """One router replica: its ledger, talking to the shared bank as the router's sync does."""

    def __init__(self, name: str, bank: QuotaBank, limits: dict = LIMITS) -> None:
        self.name, self.bank = name, bank
        self.ledger = QuotaLedger(limits, minute_s=60, day_s=86_400)

    def admit(self, tenant: str, tokens: int, now: float) -> Charge | None:
        costs = self.ledger.costs(tenant, tokens, now)
        charge = self.ledger.take(tenant, tokens, costs)
        if charge is None:
            grants = self.bank.exchange(self.name, now, self.ledger.report(now), self.ledger.shortfall(costs))
            for key, grant in grants.items():
                self.ledger.add_lease(key, grant.granted)
            charge = self.ledger.take(tenant, tokens, costs)
        return charge

    def sync(self, now: float) -> None:
        self.bank.exchange(self.name, now, self.ledger.report(now), {})


def test_two_routers_together_never_precharge_past_the_limit() -> None:
    bank = QuotaBank()
    routers = [Router("r1", bank), Router("r2", bank)]
    admitted = 0
    for i in range(400):
        router = routers[i % 2]
        if router.admit("b", 7, now=1.0 + i * 0.01):
            admitted += 7
        if i % 10 == 0:
            router.sync(1.0 + i * 0.01)
    assert 1000 - 2 * 7 < admitted <= 1000


def test_settlement_refunds_unused_tokens_and_charges_overruns() -> None:
    bank = QuotaBank()
    router = Router("r1", bank)
    charge = router.admit("b", 600, now=1.0)
    assert charge is not None
    assert router.admit("b", 600, now=1.1) is None  # 600 + 600 > 1000
    router.ledger.settle(charge, 100)  # it used only 100: 500 back
    router.sync(1.2)
    assert bank.used(("b", "tokens", 0)) == 100
    assert router.admit("b", 600, now=1.3) is not None
    over = router.admit("b", 200, now=1.4)
    assert over is not None
    router.ledger.settle(over, 400)  # above its estimate: charged anyway, past the limit
    router.sync(1.5)
    assert bank.used(("b", "tokens", 0)) == 100 + 600 + 400
    assert router.admit("b", 1, now=1.6) is None


def test_an_idle_router_returns_its_lease_within_one_sync() -> None:
    bank = QuotaBank()
    r1, r2 = Router("r1", bank), Router("r2", bank)
    assert r1.admit("b", 10, now=1.0)  # r1 takes a lease much larger than 10
    grant = bank.exchange("r2", 1.0, {}, {("b", "tokens", 0): (1000.0, 1000)})[("b", "tokens", 0)]
    assert grant.granted == 0 and grant.free_later == 1000  # r1 has not reported its 10 yet
    r1.sync(1.2)  # r1 used its lease since the last report: it keeps it
    r1.sync(1.4)  # untouched since: returned
    assert r2.admit("b", 990, now=1.5) is not None


def test_requests_and_tokens_and_windows() -> None:
    bank = QuotaBank()
    router = Router("r1", bank)
    assert all(router.admit("a", 1, now=1.0) for _ in range(50))
    assert router.admit("a", 1, now=2.0) is None  # 50 requests per minute
    assert router.admit("b", 1, now=2.0) is not None  # another tenant is unaffected
    assert router.admit("a", 1, now=61.0) is not None  # the next minute window


def test_a_lost_report_is_restored_into_the_next() -> None:
    bank = QuotaBank()
    router = Router("r1", bank)
    charge = router.admit("b", 100, now=1.0)
    assert charge
    lost = router.ledger.report(1.1)
    router.ledger.restore(lost)
    router.sync(1.2)
    assert bank.used(("b", "tokens", 0)) == 100


def test_usage_and_old_windows_are_forgotten() -> None:
    bank = QuotaBank()
    router = Router("r1", bank)
    assert router.admit("b", 100, now=1.0)
    router.sync(1.1)
    assert bank.usage({"tokens": 0}) == {"b": {"tokens": 100}}
    bank.exchange("r1", 200.0, {}, {}, oldest={"tokens": 2})
    assert bank.usage({"tokens": 0}) == {}


@pytest.mark.parametrize("tokens", [1001, 5000])
def test_a_request_larger_than_the_limit_is_refused(tokens: int) -> None:
    assert Router("r1", QuotaBank()).admit("b", tokens, now=1.0) is None


def test_a_cancelled_charge_costs_nothing() -> None:
    bank = QuotaBank()
    router = Router("r1", bank)
    charge = router.admit("a", 100, now=1.0)
    assert charge
    router.ledger.cancel(charge)
    router.sync(1.1)
    assert bank.used(("a", "tokens", 0)) == 0 and bank.used(("a", "requests", 0)) == 0
