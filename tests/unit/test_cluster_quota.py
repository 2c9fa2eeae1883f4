"""ClusterQuota (serve_app.router.cluster_quota): the sync loop's staleness bound, Retry-After,
and the fallback share when the bank is unreachable; the bank in process, on the virtual-time loop."""

from __future__ import annotations

from collections.abc import Mapping

from serve_app.core.quota import Charge, QuotaBank, QuotaLedger, QuotaLimits
from serve_app.router.cluster_quota import ClusterQuota, LocalBank, QuotaRefusal
from tests.unit.virtual_time import advance

SYNC_S = 0.02
LIMITS = {"t": QuotaLimits(tokens_per_minute=1000)}


def router(name: str, bank: QuotaBank, routers: int = 2) -> ClusterQuota:
    return ClusterQuota(QuotaLedger(LIMITS, 60, 86_400), LocalBank(bank), name, SYNC_S, routers, clock=lambda: 1.0)


async def test_usage_reaches_the_bank_within_one_sync_interval() -> None:
    bank = QuotaBank()
    r1 = router("r1", bank)
    charge = await r1.admit("t", 300)
    assert isinstance(charge, Charge)
    r1.settle(charge, 120)
    await advance(SYNC_S * 2.5)  # one interval, plus the loop's own scheduling
    assert bank.used(("t", "tokens", 0)) == 120
    assert (await r1.usage())["t"]["tokens"] == 120


async def test_an_idle_lease_returns_within_one_sync_interval() -> None:
    bank = QuotaBank()
    r1, r2 = router("r1", bank), router("r2", bank)
    assert isinstance(await r1.admit("t", 100), Charge)  # r1 holds a lease beyond its 100
    refused = await r2.admit("t", 800)
    assert isinstance(refused, QuotaRefusal) and refused.retry_after_s == 1  # held elsewhere: soon
    await advance(SYNC_S * 3.5)  # r1 used it in its first interval, left it idle in the next
    assert isinstance(await r2.admit("t", 800), Charge)
    exhausted = await r2.admit("t", 200)
    assert isinstance(exhausted, QuotaRefusal) and exhausted.retry_after_s == 59  # to the window's end


class DeadBank(LocalBank):
    async def exchange(self, *args: object, **kwargs: object) -> dict:  # type: ignore[override]
        raise ConnectionError("the bank actor is restarting")

    async def usage(self, windows: Mapping[str, int]) -> dict[str, dict[str, float]]:
        raise ConnectionError("the bank actor is restarting")


async def test_without_the_bank_a_router_admits_only_its_share() -> None:
    quota = ClusterQuota(QuotaLedger(LIMITS, 60, 86_400), DeadBank(), "r1", SYNC_S, 2, clock=lambda: 1.0)
    admitted = 0
    for _ in range(20):
        if isinstance(await quota.admit("t", 100), Charge):
            admitted += 100
    assert admitted == 500  # 1000 / 2 router replicas


async def test_a_request_larger_than_the_quota_cannot_be_retried() -> None:
    refused = await router("r1", QuotaBank()).admit("t", 1001)
    assert isinstance(refused, QuotaRefusal) and refused.retry_after_s is None
