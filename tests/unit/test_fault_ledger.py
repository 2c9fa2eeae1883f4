"""The fault ledger's classification, recovery time and report (pure, milliseconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serve_app.bench.fault_report import markdown_table, text_table, write_fault_report
from serve_app.bench.ledger import Ledger, Outcome, classify
from serve_app.bench.records import (
    CLIENT_CUT,
    CONNECTION,
    CUT_STREAM,
    NO_TOKENS,
    STREAM_ERROR,
    TIMEOUT,
    RequestRecord,
    is_openai_error_body,
)

OPENAI_BODY = json.dumps({"error": {"message": "busy", "type": "service_unavailable", "param": None, "code": None}})


def ok(prompt_tokens: int = 7, rid: str = "r1", echoed: str | None = "r1", start: float = 0.0) -> RequestRecord:
    r = RequestRecord(index=0, prompt_tokens=prompt_tokens, max_tokens=4, request_id=rid, start_s=start)
    r.http_status, r.echoed_request_id, r.success = 200, echoed, True
    r.output_tokens_source, r.stream_done, r.latency_s = "usage", True, 1.0
    return r


def failed(kind: str, status: int | None = None, openai: bool = False, done: bool = False, start: float = 0.0):
    r = RequestRecord(index=0, prompt_tokens=7, max_tokens=4, request_id="r1", start_s=start)
    r.http_status = status
    r.echoed_request_id = "r1" if status is not None else None
    r.fail(kind, "detail")
    r.openai_error, r.stream_done, r.latency_s = openai, done, 1.0
    return r


def test_a_matching_complete_answer_succeeds() -> None:
    assert classify(ok(), expected_prompt_tokens=7).outcome is Outcome.SUCCEEDED


def test_a_response_to_another_request_is_lost() -> None:
    verdict = classify(ok(echoed="someone-else"), expected_prompt_tokens=7)
    assert verdict.outcome is Outcome.LOST and verdict.reason.startswith("mixed_up: X-Request-Id")
    swapped = classify(ok(prompt_tokens=9), expected_prompt_tokens=7)
    assert swapped.outcome is Outcome.LOST and "prompt_tokens" in swapped.reason


def test_an_answer_without_usage_is_lost() -> None:
    record = ok()
    record.output_tokens_source = "chunks"
    assert classify(record, 7).outcome is Outcome.LOST


@pytest.mark.parametrize("status", [400, 429, 503, 504])
def test_http_errors_with_an_openai_body_are_clear(status: int) -> None:
    verdict = classify(failed(f"http_{status}", status, openai=True))
    assert (verdict.outcome, verdict.reason) == (Outcome.CLEAR_ERROR, f"http_{status}")


def test_http_errors_without_an_openai_body_are_lost() -> None:
    verdict = classify(failed("http_502", 502, openai=False))
    assert (verdict.outcome, verdict.reason) == (Outcome.LOST, "unclear_http_502")


def test_a_stream_error_event_is_clear_only_when_done_follows() -> None:
    assert classify(failed(STREAM_ERROR, 200, openai=True, done=True)).outcome is Outcome.CLEAR_ERROR
    assert classify(failed(STREAM_ERROR, 200, openai=True, done=False)).reason == "stream_error_without_done"
    assert classify(failed(STREAM_ERROR, 200, openai=False, done=True)).reason == "unclear_stream_error"


@pytest.mark.parametrize("kind", [TIMEOUT, CONNECTION, CUT_STREAM, NO_TOKENS])
def test_silence_and_cuts_are_lost(kind: str) -> None:
    verdict = classify(failed(kind, 200 if kind in (CUT_STREAM, NO_TOKENS) else None))
    assert (verdict.outcome, verdict.reason) == (Outcome.LOST, kind)


def test_openai_error_body_detection() -> None:
    assert is_openai_error_body(OPENAI_BODY)
    assert not is_openai_error_body("Internal Server Error")
    assert not is_openai_error_body(json.dumps({"error": "plain string"}))
    assert not is_openai_error_body(json.dumps({"error": {"message": ""}}))


def ledger_with(*records: RequestRecord, fault_at: float | None) -> Ledger:
    ledger = Ledger("s")
    for r in records:
        ledger.add(r, 7)
    ledger.fault_at_s = fault_at
    return ledger


def test_recovery_is_the_first_success_after_the_last_failure() -> None:
    ledger = ledger_with(
        ok(start=0.0),  # before the fault
        failed("http_503", 503, openai=True, start=10.5),
        failed(STREAM_ERROR, 200, openai=True, done=True, start=9.0),  # in flight at the fault
        ok(start=11.0),  # ends at 12.0
        ok(start=13.0),
        fault_at=10.0,
    )
    assert ledger.recovery_s() == pytest.approx(2.0)
    summary = ledger.summary()
    assert (summary.sent, summary.succeeded, summary.clear_errors, summary.lost) == (5, 3, 2, 0)
    # In flight between the fault (10 s) and recovery (12 s): the two failures and the success at 11 s.
    assert len(ledger.during_fault()) == 3


def test_no_failure_means_zero_recovery_and_none_without_success() -> None:
    assert ledger_with(ok(start=0.0), ok(start=5.0), fault_at=2.0).recovery_s() == 0.0
    never = ledger_with(ok(start=0.0), failed(TIMEOUT, start=3.0), fault_at=2.0)
    assert never.recovery_s() is None and never.summary().lost == 1
    assert ledger_with(ok(), fault_at=None).recovery_s() is None


def test_report_renders_every_scenario(tmp_path: Path) -> None:
    summary = ledger_with(ok(start=0.0), failed("http_429", 429, openai=True, start=1.0), fault_at=0.5).summary()
    summary.checks["router_rss_growth_mib"] = 3.2
    assert "| s | 2 | 1 | 1 | 0 | 0 |" in markdown_table([summary])
    assert text_table([summary]).splitlines()[1].startswith("s")
    write_fault_report([summary], tmp_path, {"command": "make soak"})
    data = json.loads((tmp_path / "faults.json").read_text())
    assert data["scenarios"][0]["lost"] == 0 and data["scenarios"][0]["checks"]["router_rss_growth_mib"] == 3.2
    assert "router_rss_growth_mib = 3.2" in (tmp_path / "faults.md").read_text()


def test_a_stream_the_client_cut_after_tokens_is_accounted_for_but_no_failure() -> None:
    cut = failed(CLIENT_CUT, 200)
    cut.output_tokens = 3
    verdict = classify(cut)
    assert (verdict.outcome, verdict.reason) == (Outcome.CUT_BY_CLIENT, "after_3_chunks")
    silent = failed(CLIENT_CUT, 200)  # cut before any token: nothing shows the server answered
    assert classify(silent).outcome is Outcome.LOST
    ledger = ledger_with(ok(start=0.0), cut, fault_at=0.5)
    assert ledger.summary().cut_by_client == 1 and ledger.recovery_s() == 0.0
