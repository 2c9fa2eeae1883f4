"""Flow control on one router replica: who is calling (tenant, class), their concurrency and
cluster-wide quotas (429), and the priority admission queue (503 when shed, full, past the
deadline or sure to pass it: "late"). Every refusal is an OpenAI error with Retry-After, decided
without waiting on an engine.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from serve_app.config import AppConfig
from serve_app.config_tenants import PRIORITY_ORDER, FlowControlConfig, TenantLimits
from serve_app.core.flow_queue import FlowQueue, Waiter, effective_priority
from serve_app.core.quota import Charge, QuotaLedger
from serve_app.observability.recorder import ServeAppMetrics
from serve_app.router.cluster_quota import Bank, ClusterQuota, QuotaRefusal, quota_limits
from serve_app.router.errors import OpenAIError

DEFAULT_TENANT = "default"
PRIORITY_HEADER = "x-priority"
_QUOTA_NAMES = {"requests": "requests per minute", "tokens": "tokens per minute", "tokens_day": "tokens per day"}


@dataclass(frozen=True)
class Caller:
    tenant: str
    priority: int  # index into PRIORITY_ORDER
    admin: bool = False

    @property
    def priority_name(self) -> str:
        return PRIORITY_ORDER[self.priority]


class TenantDirectory:
    """API key ids (serve_app.router.security: ``key-`` and the digest's first 12 hex) to tenants."""

    def __init__(self, flow: FlowControlConfig) -> None:
        self.limits: dict[str, TenantLimits] = {DEFAULT_TENANT: flow.default}
        self._by_key: dict[str, str] = {}
        self.admins: set[str] = set()
        for tenant in flow.tenants:
            self.limits[tenant.name] = tenant
            self._by_key.update({"key-" + d[:12]: tenant.name for d in tenant.api_key_sha256})
            if tenant.admin:
                self.admins.add(tenant.name)

    def key_ids(self, tenant: str) -> list[str]:
        return sorted(k for k, t in self._by_key.items() if t == tenant)

    def caller(self, client: str | None, priority_header: str | None) -> Caller:
        tenant = self._by_key.get(client or "", DEFAULT_TENANT)
        assigned = PRIORITY_ORDER.index(self.limits[tenant].priority)
        asked = PRIORITY_ORDER.index(priority_header) if priority_header in PRIORITY_ORDER else None
        return Caller(tenant, effective_priority(assigned, asked), tenant in self.admins)


@dataclass(eq=False)
class FlowPass:
    caller: Caller
    waiter: Waiter
    charge: Charge | None
    done: bool = False


class FlowGate:
    def __init__(
        self,
        flow: FlowControlConfig,
        quota: ClusterQuota,
        metrics: ServeAppMetrics,
        replica_name: str,
        router_replicas: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.flow = flow
        self.tenants = TenantDirectory(flow)
        self.quota = quota
        self.metrics = metrics
        self.replica_name = replica_name
        self.router_replicas = router_replicas
        self.clock = clock
        caps = tuple(flow.class_queue(name).max_in_flight for name in PRIORITY_ORDER)
        contended = tuple(flow.class_queue(name).max_in_flight_when_higher_active for name in PRIORITY_ORDER)
        self.queue = FlowQueue(flow.max_in_flight, flow.max_waiting, len(PRIORITY_ORDER), caps, contended)
        self._active: dict[str, int] = {}
        self._futures: dict[Waiter, asyncio.Future[None]] = {}

    async def enter(self, caller: Caller, cost: int, timeout_s: float) -> FlowPass:
        """Admitted and started, or an OpenAIError (429 quota/concurrency, 503 capacity)."""
        self._check_concurrency(caller)
        charge = await self._charge(caller, cost)
        queue_wait_s = min(self.flow.class_queue(caller.priority_name).max_wait_s, timeout_s)
        now = self.clock()
        waiter = Waiter(caller.tenant, caller.priority, cost, now + queue_wait_s)
        arrival = self.queue.arrive(waiter, now)
        for victim in arrival.shed:
            self._refuse_waiter(victim, "shed")
        if arrival.outcome == "refused":
            self._cancel(charge)
            raise self._capacity(caller, "queue_full", "the server is at capacity and its queue is full")
        if arrival.outcome == "late":
            self._cancel(charge)
            message = f"the server is at capacity: this request would wait more than {queue_wait_s:g} s to start"
            raise self._capacity(caller, "late", message)
        self._active[caller.tenant] = self._active.get(caller.tenant, 0) + 1
        flow_pass = FlowPass(caller, waiter, charge)
        if arrival.outcome == "queued":
            await self._wait(flow_pass, queue_wait_s)
        self.metrics.flow_queue_wait(caller.priority_name, self.clock() - now)
        self.metrics.tenant_request(caller.tenant, caller.priority_name, "admitted")
        self._record_queue()
        return flow_pass

    def leave(self, flow_pass: FlowPass, prompt_tokens: int, completion_tokens: int) -> None:
        """The request ended (any way): settle its quota and free its slot; idempotent."""
        if flow_pass.done:
            return
        flow_pass.done = True
        actual = prompt_tokens + completion_tokens
        if flow_pass.charge is not None:
            self.quota.settle(flow_pass.charge, actual)
        self.metrics.tenant_tokens(flow_pass.caller.tenant, prompt_tokens, completion_tokens)
        self._active[flow_pass.caller.tenant] -= 1
        self.queue.finish(flow_pass.waiter, actual, self.clock())
        self._pump()

    def _check_concurrency(self, caller: Caller) -> None:
        limit = self.tenants.limits[caller.tenant].max_concurrent
        if limit is not None and self._active.get(caller.tenant, 0) >= math.ceil(limit / self.router_replicas):
            self.metrics.tenant_request(caller.tenant, caller.priority_name, "concurrency")
            message = f"too many concurrent requests for this key (at most {limit}); retry after 1 s"
            raise OpenAIError(429, message, code="concurrency_limit_exceeded", headers={"Retry-After": "1"})

    async def _charge(self, caller: Caller, cost: int) -> Charge | None:
        decision = await self.quota.admit(caller.tenant, cost)
        if isinstance(decision, Charge):
            return decision
        self.metrics.tenant_request(caller.tenant, caller.priority_name, "quota")
        raise _quota_error(decision)

    async def _wait(self, flow_pass: FlowPass, queue_wait_s: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._futures[flow_pass.waiter] = future
        self._record_queue()
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout=queue_wait_s)
        except BaseException as err:
            self._futures.pop(flow_pass.waiter, None)
            if flow_pass.waiter.started:  # started as the wait ended: give the slot back
                self.leave(flow_pass, 0, 0)
            else:
                self.queue.remove(flow_pass.waiter)
                self._active[flow_pass.caller.tenant] -= 1
                self._cancel(flow_pass.charge)
                self._record_queue()
            if isinstance(err, TimeoutError):
                message = "the request waited past its deadline in the admission queue"
                raise self._capacity(flow_pass.caller, "deadline", message) from None
            raise

    def _pump(self) -> None:
        started, expired = self.queue.next_ready(self.clock())
        for waiter in started:
            future = self._futures.pop(waiter, None)
            if future is not None and not future.done():
                future.set_result(None)
        for waiter in expired:
            self._refuse_waiter(waiter, "deadline")
        self._record_queue()

    def _refuse_waiter(self, waiter: Waiter, outcome: str) -> None:
        future = self._futures.pop(waiter, None)
        caller = Caller(waiter.tenant, waiter.priority)
        message = "shed for higher-priority traffic" if outcome == "shed" else "past its deadline in the queue"
        if future is not None and not future.done():
            future.set_exception(self._capacity(caller, outcome, f"the request was {message}"))

    def _capacity(self, caller: Caller, outcome: str, message: str) -> OpenAIError:
        self.metrics.tenant_request(caller.tenant, caller.priority_name, outcome)
        retry = str(self.flow.retry_after_s)
        return OpenAIError(503, f"{message}; retry after {retry} s", code=outcome, headers={"Retry-After": retry})

    def _cancel(self, charge: Charge | None) -> None:
        if charge is not None:
            self.quota.ledger.cancel(charge)

    def _record_queue(self) -> None:
        waiting: dict[str, int] = {name: self.queue.waiting_in(i) for i, name in enumerate(PRIORITY_ORDER)}
        self.metrics.flow_queue(self.replica_name, waiting)


def _quota_error(refusal: QuotaRefusal) -> OpenAIError:
    limit = _QUOTA_NAMES[refusal.key[1]]
    if refusal.retry_after_s is None:
        message = f"this request's estimated tokens exceed your limit of {limit}; send a shorter request"
        return OpenAIError(429, message, code="request_too_large_for_quota")
    message = f"quota of {limit} reached; retry after {refusal.retry_after_s} s"
    return OpenAIError(429, message, code="quota_exceeded", headers={"Retry-After": str(refusal.retry_after_s)})


def build_flow_gate(
    config: AppConfig,
    bank: Bank,
    metrics: ServeAppMetrics,
    replica_name: str,
    clock: Callable[[], float] = time.monotonic,
) -> FlowGate:
    flow = config.flow_control
    assert flow is not None
    tenants = TenantDirectory(flow)
    ledger = QuotaLedger(quota_limits(tenants.limits), flow.minute_s, flow.day_s)
    routers = config.router.num_replicas
    quota = ClusterQuota(ledger, bank, replica_name, flow.sync_interval_s, routers)
    return FlowGate(flow, quota, metrics, replica_name, routers, clock)
