"""The request ledger of a fault scenario (pure: no I/O, no Ray, no vLLM).

Every request a load generator sends ends as exactly one of

* ``succeeded``: a complete answer (a stream closed by ``data: [DONE]``) that is the answer *to this
  request*: the server echoed our ``X-Request-Id`` and the usage it reports counts exactly this
  request's prompt tokens (each request gets a prompt of its own length, so a response swapped
  between two requests shows up as a wrong ``prompt_tokens``);
* ``clear_error``: an answer a client can act on: an HTTP 4xx/5xx whose body is an OpenAI error
  object, or a stream that ends with an explicit error event followed by ``data: [DONE]``;
* ``cut_by_client``: a stream the client itself closed after receiving tokens (a disconnect test's
  own doing: neither a success nor the server's failure, but still accounted for);
* ``lost``: everything else: no answer within the deadline, a refused or broken connection, a
  stream cut without an error event or ``[DONE]``, an error without an OpenAI body, an answer without
  usage, or a mixed-up response.

Besides the counts, a scenario reports the p99 latency of the requests in flight during the fault
and the recovery time (see :meth:`Ledger.summary`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from serve_app.bench.records import CLIENT_CUT, STREAM_ERROR, RequestRecord
from serve_app.bench.stats import percentile


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    CLEAR_ERROR = "clear_error"
    CUT_BY_CLIENT = "cut_by_client"
    LOST = "lost"


_FAILURES = (Outcome.CLEAR_ERROR, Outcome.LOST)


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str  # "ok", the error kind ("http_503", "stream_error"), or why the request counts as lost


def _mixed_up(record: RequestRecord, expected_prompt_tokens: int | None) -> str | None:
    if record.request_id and record.http_status is not None and record.echoed_request_id != record.request_id:
        return f"mixed_up: X-Request-Id {record.echoed_request_id!r} != {record.request_id!r}"
    if record.success and expected_prompt_tokens is not None and record.prompt_tokens != expected_prompt_tokens:
        return f"mixed_up: prompt_tokens {record.prompt_tokens} != {expected_prompt_tokens}"
    return None


def classify(record: RequestRecord, expected_prompt_tokens: int | None = None) -> Verdict:
    """The ledger's rule for one finished request (see the module docstring)."""
    mixed = _mixed_up(record, expected_prompt_tokens)
    if mixed is not None:
        return Verdict(Outcome.LOST, mixed)
    if record.success:
        if record.output_tokens_source != "usage":
            return Verdict(Outcome.LOST, "no_usage: the answer did not report token usage")
        return Verdict(Outcome.SUCCEEDED, "ok")
    kind = record.error_kind or "unknown"
    if kind == CLIENT_CUT and record.output_tokens > 0:
        return Verdict(Outcome.CUT_BY_CLIENT, f"after_{record.output_tokens}_chunks")
    if kind == STREAM_ERROR:
        if record.openai_error and record.stream_done:
            return Verdict(Outcome.CLEAR_ERROR, kind)
        return Verdict(Outcome.LOST, "stream_error_without_done" if record.openai_error else "unclear_stream_error")
    if kind.startswith("http_"):
        return Verdict(Outcome.CLEAR_ERROR, kind) if record.openai_error else Verdict(Outcome.LOST, f"unclear_{kind}")
    return Verdict(Outcome.LOST, kind)  # timeout, connection, cut_stream, bad_response, no_tokens


@dataclass(frozen=True)
class Entry:
    """One request on the scenario's clock (seconds from the scenario's start)."""

    start_s: float
    end_s: float
    verdict: Verdict
    status: int | None
    retry_after: str | None

    @property
    def latency_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class ScenarioSummary:
    """One row of the fault report."""

    scenario: str
    sent: int
    succeeded: int
    clear_errors: int
    lost: int
    p99_latency_during_fault_s: float | None
    recovery_s: float | None  # None: never recovered (or no fault); 0.0: no request failed after the fault
    fault_at_s: float | None
    outcomes: dict[str, int] = field(default_factory=dict)  # reason -> count, all outcomes
    cut_by_client: int = 0  # streams the client closed after receiving tokens (disconnect tests)
    checks: dict[str, Any] = field(default_factory=dict)  # scenario-specific measurements

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Ledger:
    """Collects the verdicts of one scenario. ``fault_at_s`` is set by whoever injects the fault."""

    def __init__(self, scenario: str) -> None:
        self.scenario = scenario
        self.entries: list[Entry] = []
        self.fault_at_s: float | None = None
        self.checks: dict[str, Any] = {}

    def add(self, record: RequestRecord, expected_prompt_tokens: int | None = None) -> Verdict:
        """Record a finished request; ``record.start_s`` is on the scenario's clock."""
        verdict = classify(record, expected_prompt_tokens)
        end_s = record.start_s + record.latency_s
        self.entries.append(Entry(record.start_s, end_s, verdict, record.http_status, record.retry_after))
        return verdict

    def count(self, outcome: Outcome) -> int:
        return sum(1 for e in self.entries if e.verdict.outcome is outcome)

    def statuses(self) -> Counter[int | None]:
        return Counter(e.status for e in self.entries)

    def recovery_s(self) -> float | None:
        """Seconds from the fault until a request succeeds again after the last failure.

        Failures are requests that ended in an error and were still running at (or started after)
        the fault. Recovery is the end of the first success that started after the last failure
        started; 0.0 when nothing failed; ``None`` when no request succeeded after the last failure.
        """
        if self.fault_at_s is None:
            return None
        fault = self.fault_at_s
        failed = [e for e in self.entries if e.verdict.outcome in _FAILURES and e.end_s >= fault]
        if not failed:
            return 0.0
        last_failure = max(e.start_s for e in failed)
        later = [e.end_s for e in self.entries if e.verdict.outcome is Outcome.SUCCEEDED and e.start_s > last_failure]
        return max(0.0, min(later) - fault) if later else None

    def during_fault(self) -> list[Entry]:
        """Requests in flight at any time between the fault and the recovery (or the fault alone)."""
        if self.fault_at_s is None:
            return []
        recovery = self.recovery_s()
        until = self.fault_at_s + (recovery if recovery is not None else float("inf"))
        return [e for e in self.entries if e.end_s >= self.fault_at_s and e.start_s <= until]

    def summary(self) -> ScenarioSummary:
        during = [e.latency_s for e in self.during_fault()]
        return ScenarioSummary(
            scenario=self.scenario,
            sent=len(self.entries),
            succeeded=self.count(Outcome.SUCCEEDED),
            clear_errors=self.count(Outcome.CLEAR_ERROR),
            lost=self.count(Outcome.LOST),
            cut_by_client=self.count(Outcome.CUT_BY_CLIENT),
            p99_latency_during_fault_s=round(percentile(during, 99), 3) if during else None,
            recovery_s=None if (r := self.recovery_s()) is None else round(r, 3),
            fault_at_s=None if self.fault_at_s is None else round(self.fault_at_s, 3),
            outcomes=dict(sorted(Counter(f"{e.verdict.outcome}:{e.verdict.reason}" for e in self.entries).items())),
            checks=dict(self.checks),
        )

    def lost_reasons(self) -> dict[str, int]:
        return dict(Counter(e.verdict.reason for e in self.entries if e.verdict.outcome is Outcome.LOST))
