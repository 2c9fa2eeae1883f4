"""Pure statistics over per-request records of the project's load generator: percentiles,
throughput, goodput, errors.

``serve-app bench`` sends streaming chat and completions through ``vllm bench serve``
(serve_app/bench/vllm_serve.py), which reports its own figures; the load generator's records are
summarized here: ``/generate`` and non-streaming requests (no TTFT, TPOT or ITL), and the streamed
requests of the fault ledger's loads and of any other streaming :class:`~serve_app.bench.settings.Target`
(every figure). The definitions are vLLM's (``vllm/benchmarks/serve.py``, ``calculate_metrics``)
so that the two kinds of run read alike:

- percentiles interpolate linearly between order statistics (NumPy's default method);
- TPOT of one request is ``(latency - ttft) / (output_tokens - 1)``, only for requests with more
  than one output token; for goodput a request with one token counts as TPOT 0;
- ITL percentiles pool every inter-token gap of every successful request;
- throughputs divide by the wall time of the whole run (first dispatch to last completion), and
  count successful requests only; input tokens are the server's ``prompt_tokens`` when reported;
- a request is "good" when each given objective is met with ``value <= slo``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from serve_app.bench.records import RequestRecord


@dataclass(frozen=True)
class Slo:
    """Service-level objectives in milliseconds; ``None`` means not constrained."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.ttft_ms, self.tpot_ms, self.e2el_ms))


@dataclass(frozen=True)
class Distribution:
    """Summary of one latency metric, in milliseconds."""

    count: int
    mean_ms: float
    std_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


@dataclass(frozen=True)
class Summary:
    """One load level's figures. TTFT, TPOT and ITL come from streamed requests (vLLM's benchmark's,
    or the load generator's); a run without streaming leaves them empty (count 0)."""

    completed: int
    failed: int
    errors: dict[str, int]
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    request_goodput: float | None
    ttft: Distribution
    tpot: Distribution
    itl: Distribution
    e2el: Distribution

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation; 0.0 for no values (as vLLM does)."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} is outside 0..100")
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0


def std(values: Sequence[float]) -> float:
    """Population standard deviation (NumPy's default ``ddof=0``)."""
    if not values:
        return 0.0
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / len(values))


def distribution(values_s: Sequence[float]) -> Distribution:
    """Summarize seconds into milliseconds."""
    ms = [v * 1000.0 for v in values_s]
    return Distribution(
        count=len(ms),
        mean_ms=mean(ms),
        std_ms=std(ms),
        p50_ms=percentile(ms, 50),
        p95_ms=percentile(ms, 95),
        p99_ms=percentile(ms, 99),
    )


def tpot_s(record: RequestRecord) -> float | None:
    """Mean time per output token after the first; ``None`` when undefined."""
    if record.ttft_s is None or record.output_tokens <= 1:
        return None
    return (record.latency_s - record.ttft_s) / (record.output_tokens - 1)


def meets_slo(record: RequestRecord, slo: Slo) -> bool:
    """Whether a successful request meets every given objective. A TTFT or TPOT objective cannot
    be met by a request that measured no TTFT (a non-streaming one; the bench command refuses
    such objectives for runs without streaming)."""
    if not record.success:
        return False
    if slo.ttft_ms is not None and (record.ttft_s is None or record.ttft_s * 1000.0 > slo.ttft_ms):
        return False
    if slo.tpot_ms is not None and (record.ttft_s is None or (tpot_s(record) or 0.0) * 1000.0 > slo.tpot_ms):
        return False
    return slo.e2el_ms is None or record.latency_s * 1000.0 <= slo.e2el_ms


def error_counts(records: Iterable[RequestRecord]) -> dict[str, int]:
    counts = Counter(r.error_kind or "unknown" for r in records if not r.success)
    return dict(sorted(counts.items()))


def summarize(records: Sequence[RequestRecord], duration_s: float, slo: Slo | None = None) -> Summary:
    """Aggregate one run. ``duration_s`` is the run's wall time and must be positive."""
    if duration_s <= 0:
        raise ValueError("duration_s must be positive")
    ok = [r for r in records if r.success]
    total_in = sum(r.prompt_tokens for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    streamed = [r for r in ok if r.ttft_s is not None]
    goodput = None
    if slo is not None and slo.any:
        goodput = sum(meets_slo(r, slo) for r in ok) / duration_s
    return Summary(
        completed=len(ok),
        failed=len(records) - len(ok),
        errors=error_counts(records),
        duration_s=duration_s,
        total_input_tokens=total_in,
        total_output_tokens=total_out,
        request_throughput=len(ok) / duration_s,
        output_throughput=total_out / duration_s,
        total_token_throughput=(total_in + total_out) / duration_s,
        request_goodput=goodput,
        ttft=distribution([r.ttft_s for r in streamed if r.ttft_s is not None]),
        tpot=distribution([t for r in streamed if (t := tpot_s(r)) is not None]),
        itl=distribution([gap for r in streamed for gap in r.itl_s]),
        e2el=distribution([r.latency_s for r in ok]),
    )


def latency_cdf(values_s: Sequence[float]) -> tuple[list[float], list[float]]:
    """Points (milliseconds, cumulative fraction) of an empirical CDF, for plotting."""
    ordered = sorted(v * 1000.0 for v in values_s)
    n = len(ordered)
    return ordered, [(i + 1) / n for i in range(n)]
