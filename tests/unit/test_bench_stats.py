"""serve_app.bench.stats on synthetic timings; every expected value is computed by hand in the comments."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from serve_app.bench.records import CUT_STREAM, RequestRecord, http_error_kind
from serve_app.bench.stats import Slo, distribution, latency_cdf, meets_slo, percentile, summarize, tpot_s


def ok(ttft: float | None, itl: list[float], latency: float, out: int, prompt: int) -> RequestRecord:
    return RequestRecord(
        index=0, prompt_tokens=prompt, max_tokens=16, ttft_s=ttft, itl_s=itl, latency_s=latency, output_tokens=out,
        success=True,
    )  # fmt: skip


def failed(kind: str) -> RequestRecord:
    record = RequestRecord(index=0, prompt_tokens=99, max_tokens=16, output_tokens=7)
    record.fail(kind, "synthetic")
    return record


@pytest.fixture
def records() -> list[RequestRecord]:
    return [
        ok(0.1, [0.02, 0.03, 0.05], 0.2, out=4, prompt=10),  # TPOT (0.2 - 0.1) / 3 = 33.33 ms
        ok(0.3, [0.04], 0.34, out=2, prompt=20),  # TPOT 0.04 / 1 = 40 ms
        ok(0.2, [], 0.2, out=1, prompt=5),  # one token: no TPOT (0 for goodput)
        failed(http_error_kind(429)),
        failed(CUT_STREAM),
    ]


def test_percentile_interpolates_linearly() -> None:
    assert percentile([100, 200, 300], 50) == 200
    assert percentile([100, 200, 300], 95) == pytest.approx(290)  # rank 1.9: 200 + 0.9 * 100
    assert percentile([20, 30, 50, 40], 50) == pytest.approx(35)  # rank 1.5 of sorted 20, 30, 40, 50
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) == 0.0  # vLLM reports 0 for an empty metric


def test_percentile_agrees_with_numpy_default() -> None:
    rng = random.Random(3)
    values = [rng.expovariate(5.0) for _ in range(101)]
    for q in (0, 1, 25, 50, 90, 95, 99, 99.9, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12)


def test_percentile_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 101)


def test_distribution_in_milliseconds() -> None:
    d = distribution([0.1, 0.3, 0.2])
    assert (d.count, d.mean_ms, d.p50_ms) == (3, pytest.approx(200), pytest.approx(200))
    assert d.p99_ms == pytest.approx(298)  # rank 1.98: 200 + 0.98 * 100
    assert d.std_ms == pytest.approx(math.sqrt(20000 / 3))  # population std of 100, 200, 300


def test_tpot_excludes_first_token() -> None:
    assert tpot_s(ok(0.1, [], 0.2, out=4, prompt=1)) == pytest.approx(0.1 / 3)
    assert tpot_s(ok(0.1, [], 0.1, out=1, prompt=1)) is None
    assert tpot_s(ok(None, [], 0.5, out=9, prompt=1)) is None  # not streamed


def test_summary_counts_and_throughputs(records: list[RequestRecord]) -> None:
    s = summarize(records, duration_s=2.0)
    assert (s.completed, s.failed) == (3, 2)
    assert s.errors == {"cut_stream": 1, "http_429": 1}
    assert (s.total_input_tokens, s.total_output_tokens) == (35, 7)  # failed requests count no tokens
    assert s.request_throughput == pytest.approx(1.5)
    assert s.output_throughput == pytest.approx(3.5)
    assert s.total_token_throughput == pytest.approx(21.0)
    assert s.request_goodput is None


def test_summary_latency_metrics(records: list[RequestRecord]) -> None:
    s = summarize(records, duration_s=2.0)
    assert (s.ttft.p50_ms, s.ttft.p95_ms, s.ttft.mean_ms) == (
        pytest.approx(200),
        pytest.approx(290),
        pytest.approx(200),
    )
    # TPOT over the two requests with more than one token: 33.33 and 40 ms.
    assert s.tpot.count == 2
    assert s.tpot.p50_ms == pytest.approx(110 / 3)
    assert s.tpot.p95_ms == pytest.approx(100 / 3 + 0.95 * 20 / 3)
    # ITL pools every gap: 20, 30, 40, 50 ms.
    assert (s.itl.count, s.itl.mean_ms, s.itl.p50_ms) == (4, pytest.approx(35), pytest.approx(35))
    assert s.itl.p99_ms == pytest.approx(49.7)  # rank 2.97: 40 + 0.97 * 10
    # E2E: 200, 200, 340 ms.
    assert s.e2el.p50_ms == pytest.approx(200)
    assert s.e2el.p95_ms == pytest.approx(326)  # rank 1.9: 200 + 0.9 * 140
    assert s.e2el.mean_ms == pytest.approx(740 / 3)


def test_goodput_applies_every_slo(records: list[RequestRecord]) -> None:
    # TTFT <= 250 ms and TPOT <= 35 ms: the first (33 ms) and the one-token request (TPOT 0) pass.
    assert summarize(records, 2.0, Slo(ttft_ms=250, tpot_ms=35)).request_goodput == pytest.approx(1.0)
    assert summarize(records, 2.0, Slo(ttft_ms=150)).request_goodput == pytest.approx(0.5)
    assert summarize(records, 2.0, Slo(e2el_ms=340)).request_goodput == pytest.approx(1.5)  # boundary counts
    assert summarize(records, 2.0, Slo(e2el_ms=250)).request_goodput == pytest.approx(1.0)
    assert summarize(records, 2.0, Slo(tpot_ms=30)).request_goodput == pytest.approx(0.5)
    assert not meets_slo(failed(CUT_STREAM), Slo(e2el_ms=10_000))


def test_unstreamed_requests_have_no_ttft_and_cannot_meet_ttft_slo() -> None:
    records = [ok(None, [], 1.0, out=10, prompt=3), ok(None, [], 3.0, out=30, prompt=3)]
    s = summarize(records, 4.0, Slo(e2el_ms=2000))
    assert (s.ttft.count, s.tpot.count, s.itl.count) == (0, 0, 0)
    assert s.e2el.p50_ms == pytest.approx(2000)
    assert s.request_goodput == pytest.approx(0.25)
    assert not meets_slo(records[0], Slo(ttft_ms=10_000))


def test_summarize_rejects_empty_duration(records: list[RequestRecord]) -> None:
    with pytest.raises(ValueError, match="positive"):
        summarize(records, 0.0)


def test_latency_cdf_points() -> None:
    xs, ys = latency_cdf([0.3, 0.1, 0.2, 0.4])
    assert xs == pytest.approx([100, 200, 300, 400])
    assert ys == [0.25, 0.5, 0.75, 1.0]
