"""Bounded admission per router: refuse work early (429/503 with Retry-After) rather than queue
without limit and time out later.

Two budgets apply to requests admitted and not yet released: a request count and a token count
(prompt + max_tokens estimate). Single event loop, no locks: admission and release are
synchronous and never interleave.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from serve_app.config import RouterConfig

RejectReason = Literal["queue_full", "token_budget"]


@dataclass(frozen=True)
class Rejection:
    status: int
    retry_after_s: int
    reason: RejectReason

    @property
    def message(self) -> str:
        if self.reason == "queue_full":
            return "the server has too many requests queued; retry later"
        return "the server's queued token budget is exhausted; retry later"


class AdmissionTicket:
    """Held while a request occupies the budgets; :meth:`release` is idempotent."""

    def __init__(self, controller: AdmissionController, cost: int) -> None:
        self._controller = controller
        self.cost = cost
        self.released = False

    def release(self) -> bool:
        """True when this call freed the capacity; later calls do nothing and return False."""
        if self.released:
            return False
        self.released = True
        self._controller._release(self.cost)
        return True

    def __enter__(self) -> AdmissionTicket:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class AdmissionController:
    def __init__(
        self,
        max_queued_requests: int,
        max_queued_tokens: int,
        overflow_status: int = 429,
        retry_after_s: int = 1,
    ) -> None:
        if max_queued_requests < 1 or max_queued_tokens < 1:
            raise ValueError("admission budgets must be >= 1")
        if overflow_status not in (429, 503):
            raise ValueError("overflow_status must be 429 or 503")
        self.max_queued_requests = max_queued_requests
        self.max_queued_tokens = max_queued_tokens
        self.overflow_status = overflow_status
        self.retry_after_s = retry_after_s
        self.queued_requests = 0
        self.queued_tokens = 0
        # Counters for metrics (exported by the router as serve_app_admission_*).
        self.admitted_total = 0
        self.released_total = 0
        self.rejected_total: Counter[RejectReason] = Counter()

    @classmethod
    def from_config(cls, config: RouterConfig) -> AdmissionController:
        return cls(
            config.max_queued_requests,
            config.max_queued_tokens,
            config.overflow_status,
            config.retry_after_s,
        )

    def try_admit(self, cost: int) -> AdmissionTicket | Rejection:
        """A ticket when the request fits both budgets, else a rejection naming the budget.

        A request costlier than the whole token budget is admitted when nothing else is queued:
        otherwise it could never run, and a "retry later" would be a lie. Such requests are
        bounded by the model's own limits (max_tokens_limit, max_model_len) upstream.
        """
        cost = max(0, cost)
        reason = self._overflow_reason(cost)
        if reason is not None:
            self.rejected_total[reason] += 1
            return Rejection(self.overflow_status, self.retry_after_s, reason)
        self.queued_requests += 1
        self.queued_tokens += cost
        self.admitted_total += 1
        return AdmissionTicket(self, cost)

    def _overflow_reason(self, cost: int) -> RejectReason | None:
        if self.queued_requests >= self.max_queued_requests:
            return "queue_full"
        if self.queued_tokens and self.queued_tokens + cost > self.max_queued_tokens:
            return "token_budget"
        return None

    def _release(self, cost: int) -> None:
        self.queued_requests -= 1
        self.queued_tokens -= cost
        self.released_total += 1
