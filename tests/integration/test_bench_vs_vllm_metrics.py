"""serve-app bench's statistics against vLLM's own (``vllm.benchmarks.serve.calculate_metrics``) on
the same synthetic timings: the two must agree on every figure both report."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from serve_app.bench.records import RequestRecord
from serve_app.bench.stats import Slo, Summary, summarize

DURATION_S = 42.0
SLO = Slo(ttft_ms=180.0, tpot_ms=40.0)
PERCENTILES = [50.0, 95.0, 99.0]


def synthetic_records(n: int = 300, seed: int = 7) -> list[RequestRecord]:
    """Requests with skewed timings, some with one output token, 10% failed."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        out_tokens = 1 if i % 17 == 0 else rng.randint(2, 64)
        ttft = rng.lognormvariate(-2.0, 0.6)
        itl = [rng.expovariate(30.0) for _ in range(out_tokens - 1)]
        record = RequestRecord(index=i, prompt_tokens=rng.randint(16, 512), max_tokens=out_tokens)
        record.start_s = rng.uniform(0, DURATION_S / 2)
        record.ttft_s, record.itl_s = ttft, itl
        record.latency_s = ttft + sum(itl)
        record.output_tokens = out_tokens
        record.success = i % 10 != 3
        if not record.success:
            record.fail("http_503", "synthetic")
        records.append(record)
    return records


def vllm_metrics(records: list[RequestRecord]) -> Any:
    from vllm.benchmarks.datasets.datasets import SampleRequest
    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncOutput
    from vllm.benchmarks.serve import calculate_metrics

    inputs = [SampleRequest(prompt="x", prompt_len=r.prompt_tokens, expected_output_len=r.max_tokens) for r in records]
    outputs = [
        RequestFuncOutput(
            success=r.success,
            latency=r.latency_s,
            output_tokens=r.output_tokens if r.success else 0,
            ttft=r.ttft_s or 0.0,
            itl=list(r.itl_s),
            prompt_len=r.prompt_tokens,
            start_time=r.start_s,
        )
        for r in records
    ]
    goodput = {"ttft": SLO.ttft_ms, "tpot": SLO.tpot_ms}
    metrics, _ = calculate_metrics(inputs, outputs, DURATION_S, None, PERCENTILES, goodput)
    return metrics


def figure_pairs(ours: Summary, theirs: Any) -> dict[str, tuple[float, float]]:
    pairs = {
        "completed": (ours.completed, theirs.completed),
        "failed": (ours.failed, theirs.failed),
        "total_input": (ours.total_input_tokens, theirs.total_input),
        "total_output": (ours.total_output_tokens, theirs.total_output),
        "request_throughput": (ours.request_throughput, theirs.request_throughput),
        "request_goodput": (ours.request_goodput or 0.0, theirs.request_goodput),
        "output_throughput": (ours.output_throughput, theirs.output_throughput),
        "total_token_throughput": (ours.total_token_throughput, theirs.total_token_throughput),
    }
    for name in ("ttft", "tpot", "itl", "e2el"):
        dist = getattr(ours, name)
        pairs[f"mean_{name}"] = (dist.mean_ms, getattr(theirs, f"mean_{name}_ms"))
        pairs[f"std_{name}"] = (dist.std_ms, getattr(theirs, f"std_{name}_ms"))
        pairs[f"median_{name}"] = (dist.p50_ms, getattr(theirs, f"median_{name}_ms"))
        for p, value in getattr(theirs, f"percentiles_{name}_ms"):
            pairs[f"p{p:g}_{name}"] = (getattr(dist, f"p{p:g}_ms"), value)
    return pairs


@pytest.mark.parametrize("seed", [7, 11])
def test_every_figure_agrees_with_vllm_calculate_metrics(seed: int) -> None:
    records = synthetic_records(seed=seed)
    pairs = figure_pairs(summarize(records, DURATION_S, SLO), vllm_metrics(records))
    assert len(pairs) == 8 + 4 * 6  # counts and rates; per latency: mean, std, median, p50, p95, p99
    off = {k: v for k, v in pairs.items() if not math.isclose(v[0], v[1], rel_tol=1e-12, abs_tol=1e-12)}
    assert not off, off
    assert 0 < pairs["request_goodput"][0] < pairs["request_throughput"][0]  # the SLOs bite, not all pass


def test_a_different_tpot_definition_would_be_caught() -> None:
    # The comparison can fail: counting the first token in TPOT moves vLLM's figure away from ours.
    records = synthetic_records()
    theirs = vllm_metrics(records)
    for r in records:
        r.output_tokens += 1
    ours = summarize(records, DURATION_S, SLO)
    assert not math.isclose(ours.tpot.mean_ms, theirs.mean_tpot_ms, rel_tol=1e-6)
