"""How many requests the flow queue lets onto one engine at once, from a measured profile's tail
latencies per concurrency (pure, stdlib only).

``max_num_seqs`` is planned from mean TPOT and an estimated TTFT; an engine filled to it can still
miss the p99 targets, because every new prompt's prefill shares steps with all the running
decodes. Where the profile measured TTFT p99 and TPOT p99 at several concurrencies, the in-flight
cap is the largest concurrency at which both stay within the SLO headroom:

* the points are walked upwards and the walk stops at the first one that misses either target (a
  later point that meets them again is noise, not room);
* between the last point that meets the targets and the first that misses, each metric is
  interpolated linearly and the cap rounded down. Tail latency grows faster than linearly as an
  engine saturates, so the straight line lies above the curve and the cap errs low;
* nothing is extrapolated: when every profiled point meets the targets, the cap is the largest
  profiled concurrency;
* the cap never exceeds ``max_num_seqs`` (the engine would not run more).

Without the data (no point with both p99s), or when even the smallest profiled concurrency misses,
the cap stays ``max_num_seqs`` and the reason says why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from serve_app.quantize.goal import Slo
from serve_app.quantize.speed import SpeedPoint


@dataclass(frozen=True)
class FlowCap:
    seqs: int  # requests in flight on one engine
    from_profile: bool
    reason: str


@dataclass(frozen=True)
class _Tail:
    concurrency: int
    ttft_ms: float
    tpot_ms: float

    def describe(self) -> str:
        return f"c={self.concurrency} (TTFT p99 {self.ttft_ms:g} ms, TPOT p99 {self.tpot_ms:g} ms)"


def _tails(points: Sequence[SpeedPoint]) -> list[_Tail]:
    tails = [
        _Tail(p.concurrency, p.ttft_p99_ms, p.tpot_p99_ms)
        for p in points
        if p.ttft_p99_ms is not None and p.tpot_p99_ms is not None
    ]
    return sorted(tails, key=lambda t: t.concurrency)


def _crossing(c0: int, v0: float, c1: int, v1: float, limit: float) -> int:
    """The largest whole concurrency in [c0, c1) whose linearly interpolated value stays <= limit."""
    if v1 <= limit:
        return c1 - 1
    return max(c0, min(c1 - 1, math.floor(c0 + (limit - v0) * (c1 - c0) / (v1 - v0))))


def _fallback(max_num_seqs: int, why: str) -> FlowCap:
    rule = "the rule without profiled tail latencies"
    return FlowCap(max_num_seqs, False, f"max_num_seqs ({max_num_seqs}), {rule}: {why}")


def in_flight_cap(points: Sequence[SpeedPoint] | None, slo: Slo, headroom: float, max_num_seqs: int) -> FlowCap:
    """The flow queue's in-flight cap per engine and the profile points that decided it."""
    if not points:
        return _fallback(max_num_seqs, "no measured profile covers this variant")
    tails = _tails(points)
    if not tails:
        missing = "the profile has no TTFT p99 and TPOT p99 per concurrency (ttft_p99_ms, tpot_p99_ms)"
        return _fallback(max_num_seqs, missing)
    ttft_limit, tpot_limit = slo.ttft_p99_ms * headroom, slo.tpot_p99_ms * headroom
    targets = f"TTFT p99 <= {ttft_limit:g} ms and TPOT p99 <= {tpot_limit:g} ms ({headroom:.0%} of the SLO)"
    meets = [t.ttft_ms <= ttft_limit and t.tpot_ms <= tpot_limit for t in tails]
    if not meets[0]:
        return _fallback(max_num_seqs, f"even the smallest profiled point {tails[0].describe()} misses {targets}")
    first_miss = meets.index(False) if False in meets else len(tails)
    last = tails[first_miss - 1]
    if first_miss == len(tails):
        cap = last.concurrency
        how = f"every profiled point meets {targets}; the largest is {last.describe()}, not extrapolated past"
    else:
        miss = tails[first_miss]
        cap = min(
            _crossing(last.concurrency, last.ttft_ms, miss.concurrency, miss.ttft_ms, ttft_limit),
            _crossing(last.concurrency, last.tpot_ms, miss.concurrency, miss.tpot_ms, tpot_limit),
        )
        how = (
            f"the largest concurrency meeting {targets}, interpolated linearly (rounded down) between "
            f"{last.describe()}, which meets them, and {miss.describe()}, which misses"
        )
    if cap >= max_num_seqs:
        return FlowCap(max_num_seqs, True, f"max_num_seqs ({max_num_seqs}): the profile allows {cap}, {how}")
    return FlowCap(cap, True, f"{cap}: {how}")
