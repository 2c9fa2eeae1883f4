"""The profile points ``goodput.py`` measures per variant: ``vllm bench serve`` runs whose TTFT and
TPOT p99s the planner turns into the flow queue's in-flight cap (``serve_app/quantize/flow_cap.py``).
Pure apart from ``measure``, which is handed the benchmark as a callable.

Two loads, each point marked with its ``load``:

* burst: closed loops, ``--request-rate inf`` and as many prompts as the concurrency (12 at c=1):
  all ``c`` requests start at once, and with fixed output lengths the waves stay in step, so every
  point's TTFT is that of a burst of ``c`` prefills;
* steady: what the router's flow queue produces, requests starting one at a time as others finish.
  For each c in ``STEADY_CONCURRENCIES``, ``max(12, 4c)`` prompts with ``--max-concurrency c`` and
  Poisson arrivals at 1.5 x the throughput an earlier profile measured for the variant near c
  (``expected_rps``): fast enough to keep ``c`` in flight, not a single burst; c=1 keeps
  ``--request-rate inf``. ``--random-range-ratio 0.5`` spreads the lengths (prompts and outputs in
  [0.5, 1.5] x the goal's; means unchanged) so finishing times stagger.

TTFT under ``--max-concurrency`` is measured from when a request is sent, after it gets the
semaphore, not from its arrival: in vLLM's ``vllm/benchmarks/serve.py`` (``benchmark``, its inner
``limited_request_func``) the request function runs inside ``async with semaphore``, and
``vllm/benchmarks/lib/endpoint_request_func.py`` (``async_request_openai_completions``) takes
``st = time.perf_counter()`` inside that function and sets ``output.ttft = timestamp - st``; the
wait for the semaphore is kept apart (``client_queue_time``). So a steady point's TTFT is that of
an engine holding ``c`` requests, the flow queue's wait excluded, as the in-flight cap needs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

BURST_POINTS = ((1, 12), (64, 128), (192, 192), (384, 384))  # (concurrency, prompts), closed loop
STEADY_CONCURRENCIES = (1, 64, 128, 192, 256)
STEADY_RATE_FACTOR = 1.5  # offered rate over the expected throughput: c stays in flight
STEADY_SPREAD = 0.5  # --random-range-ratio
PERCENTILES = ["--percentile-metrics", "ttft,tpot", "--metric-percentiles", "50,99"]


@dataclass(frozen=True)
class Point:
    load: str  # "burst" or "steady"
    concurrency: int
    prompts: int
    request_rate: float  # requests/s, Poisson arrivals; math.inf: all at once
    spread: float = 0.0  # --random-range-ratio; 0: the goal's fixed lengths


def expected_rps(earlier: Sequence[dict], concurrency: int, output_tokens: int) -> float:
    """Requests/s an earlier profile's points measured (``output_tokens_per_s / output_tokens``),
    linear between their concurrencies and flat past either end."""
    rates = sorted(
        (p["concurrency"], p["output_tokens_per_s"] / output_tokens) for p in earlier if p.get("output_tokens_per_s")
    )
    if not rates:
        raise ValueError("the earlier profile has no output_tokens_per_s for this variant")
    if concurrency <= rates[0][0]:
        return rates[0][1]
    for (c0, r0), (c1, r1) in itertools.pairwise(rates):
        if concurrency <= c1:
            return r0 + (r1 - r0) * (concurrency - c0) / (c1 - c0)
    return rates[-1][1]


def steady_points(earlier: Sequence[dict], output_tokens: int) -> list[Point]:
    points = []
    for c in STEADY_CONCURRENCIES:
        rate = math.inf if c == 1 else round(STEADY_RATE_FACTOR * expected_rps(earlier, c, output_tokens), 2)
        points.append(Point("steady", c, max(12, 4 * c), rate, STEADY_SPREAD))
    return points


def burst_points() -> list[Point]:
    return [Point("burst", c, prompts, math.inf) for c, prompts in BURST_POINTS]


def plan(earlier: Sequence[dict] | None, output_tokens: int) -> list[Point]:
    """Steady points when an earlier profile's points give the rates, else the burst."""
    return steady_points(earlier, output_tokens) if earlier else burst_points()


def _rate(point: Point) -> str:
    return "inf" if math.isinf(point.request_rate) else f"{point.request_rate:g}"


def point_argv(point: Point) -> list[str]:
    """``vllm bench serve`` arguments for one point (the traffic's lengths, URL and model are the caller's)."""
    argv = ["--num-prompts", str(point.prompts), "--max-concurrency", str(point.concurrency)]
    argv += ["--seed", str(point.concurrency), "--request-rate", _rate(point)]
    if not math.isinf(point.request_rate):
        argv += ["--burstiness", "1.0"]  # Poisson arrivals
    if point.spread:
        argv += ["--random-range-ratio", f"{point.spread:g}"]
    return argv + PERCENTILES


def record(point: Point, m: dict, batched_tokens: int | None) -> dict:
    """The profile's entry for a point from the benchmark's figures ``m``."""
    rate = "inf" if math.isinf(point.request_rate) else point.request_rate
    return (
        {"concurrency": point.concurrency, "prompts": point.prompts, "request_rate": rate, "load": point.load}
        | {"tpot_ms": round(m["mean_tpot_ms"], 2), "output_tokens_per_s": round(m["output_throughput"], 1)}
        | {"ttft_p50_ms": round(m["median_ttft_ms"], 1)}
        # the planner caps the flow queue's in-flight requests from these (serve_app/quantize/flow_cap.py)
        | {"ttft_p99_ms": round(m["p99_ttft_ms"], 1), "tpot_p99_ms": round(m["p99_tpot_ms"], 2)}
        | ({"max_num_batched_tokens": batched_tokens} if batched_tokens else {})
    )


def measure(
    bench: Callable[[list[str]], dict],
    batched_tokens: int | None,
    earlier: Sequence[dict] | None,
    output_tokens: int,
    label: str = "",
) -> list[dict]:
    """Each planned point through ``bench`` (the benchmark's extra arguments -> its figures)."""
    points = []
    for point in plan(earlier, output_tokens):
        points.append(record(point, bench(point_argv(point)), batched_tokens))
        print(label, points[-1], flush=True)
    return points
