"""The noisy-neighbour benchmark's summary of refusals (benchmarks/flow_control.py)."""

from __future__ import annotations

from benchmarks.flow_control import error_code, summarize


def test_refusals_are_counted_by_code_and_slow_ones_placed_in_the_phase() -> None:
    records = [
        {"status": 200, "ttft_s": 0.1, "latency_s": 0.5, "sent_at": 100.0},
        {"status": 503, "latency_s": 0.01, "sent_at": 100.5, "code": "late"},
        {"status": 429, "latency_s": 0.01, "sent_at": 101.0, "code": "rate_limit_exceeded"},
        {"status": 503, "latency_s": 10.0, "sent_at": 102.25, "code": "deadline"},
    ]
    out = summarize(records)
    assert out["refusal_codes"] == {"late": 1, "rate_limit_exceeded": 1, "deadline": 1}
    assert out["slow_refusals"] == [[2.25, 10.0, "deadline"]]
    assert out["lost"] == 0


def test_the_error_code_is_read_from_an_openai_error_body() -> None:
    assert error_code(b'{"error": {"message": "m", "type": "t", "code": "late"}}') == "late"
    assert error_code(b"<html>bad gateway</html>") == "unreadable"
