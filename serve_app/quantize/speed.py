"""How fast a variant decodes at a given concurrency: a measured profile, or a roofline estimate
(pure, stdlib only).

Roofline (used when no profile covers the variant; every figure it yields is labelled so). One
engine step serves every running sequence; under chunked prefill it also carries the prompts of
requests being started. In a steady state each request's prompt is prefilled once over its
output, so an average step holds ``c x (1 + input/output)`` tokens. The step takes the longer of

* memory: all weight bytes plus every running sequence's KV (average context) read once, over the
  GPU's HBM bandwidth;
* compute: two FLOPs per matmul weight per token, over the tensor-core peak of the variant's
  arithmetic (int4 weights are dequantized to 16-bit, so they compute at the 16-bit peak).

It ignores attention FLOPs, kernel efficiency and scheduling, so it is optimistic: treat it as an
upper bound on speed that a profile should replace.

Profile (JSON): ``{"gpu": "h200", "variants": {"awq": [{"concurrency": 64, "tpot_ms": 20.1,
"ttft_ms": 90}, {"concurrency": 1, "output_tokens_per_s": 120}]}}``; a point may name the engine's
``max_num_batched_tokens`` it was measured with, which the planner then keeps, and its
``ttft_p99_ms`` and ``tpot_p99_ms``, from which the planner caps the flow queue's in-flight requests
(serve_app.quantize.flow_cap). TPOT between measured
concurrencies is interpolated linearly and extrapolated past them from the last two points.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from serve_app.models.shapes import ModelShape
from serve_app.quantize.goal import Traffic
from serve_app.quantize.planner import Gpu
from serve_app.quantize.variants import FP8_WEIGHTS, Variant, variant_by_id

ROOFLINE = "roofline estimate (no profile): weights + KV bytes over HBM bandwidth vs matmul FLOPs over peak"


@dataclass(frozen=True)
class Estimate:
    tpot_ms: float
    ttft_ms: float
    source: str  # "profile ..." or the roofline label
    # Requests/s one GPU measured at this concurrency (a profile's output tokens/s over the mean
    # output): a ceiling that queueing and prefill stalls, which TPOT alone misses, already paid.
    max_rps: float | None = None


@dataclass(frozen=True)
class SpeedPoint:
    concurrency: int
    tpot_ms: float
    ttft_ms: float | None = None
    output_tokens_per_s: float | None = None
    batched_tokens: int | None = None  # the engine's max_num_batched_tokens when this was measured
    # Tail latencies at this concurrency; the flow queue's in-flight cap is planned from them.
    ttft_p99_ms: float | None = None
    tpot_p99_ms: float | None = None


def compute_peak_flops(variant: Variant, gpu: Gpu) -> float:
    if variant.weights in FP8_WEIGHTS and gpu.fp8_tflops:
        return gpu.fp8_tflops * 1e12
    if variant.weights == "w8a8":
        return gpu.int8_tops * 1e12
    return gpu.bf16_tflops * 1e12


@dataclass(frozen=True)
class Roofline:
    gpu: Gpu
    variant: Variant
    shape: ModelShape
    weight_bytes: int
    kv_bytes_per_token: int
    traffic: Traffic

    def step_ms(self, concurrency: int, tokens: float) -> float:
        context = self.traffic.input_tokens + self.traffic.output_tokens_mean / 2
        read = self.weight_bytes + concurrency * context * self.kv_bytes_per_token
        memory_s = read / (self.gpu.memory_bandwidth_gbps * 1e9)
        matmul_weights = self.shape.linear_params + self.shape.vocab_size * self.shape.hidden_size
        compute_s = 2 * matmul_weights * tokens / compute_peak_flops(self.variant, self.gpu)
        return 1000 * max(memory_s, compute_s)

    def tpot_ms(self, concurrency: int) -> float:
        t = self.traffic
        return self.step_ms(concurrency, concurrency * (1 + t.input_tokens / t.output_tokens_mean))

    def ttft_ms(self, concurrency: int, batched_tokens: int) -> float:
        """A new prompt shares each step with ``concurrency`` decodes; it needs this many full steps.
        Queueing before admission to the engine is not modelled (the admission budget bounds it)."""
        room = max(1, batched_tokens - concurrency)
        steps = math.ceil(self.traffic.input_tokens / room)
        return steps * self.step_ms(concurrency, min(batched_tokens, concurrency + self.traffic.input_tokens))

    def estimate(self, concurrency: int, batched_tokens: int) -> Estimate:
        return Estimate(self.tpot_ms(concurrency), self.ttft_ms(concurrency, batched_tokens), ROOFLINE)


@dataclass(frozen=True)
class Measured:
    """A variant's profile on the target GPU; TTFT falls back to the roofline when unmeasured."""

    points: tuple[SpeedPoint, ...]  # sorted by concurrency
    roofline: Roofline
    origin: str

    @property
    def batched_tokens(self) -> int | None:
        """The engine setting the profile measured with (the largest named), if it names one."""
        return max((p.batched_tokens for p in self.points if p.batched_tokens), default=None)

    def _interpolate(self, concurrency: int, values: Sequence[tuple[int, float]]) -> float:
        if len(values) == 1:  # one point: assume the step time grows with the batch (pessimistic)
            c0, v0 = values[0]
            return v0 if concurrency <= c0 else v0 * concurrency / c0
        pairs = list(itertools.pairwise(values))
        (c0, v0), (c1, v1) = next(((a, b) for a, b in pairs if concurrency <= b[0]), pairs[-1])
        if concurrency <= c0:
            return v0
        return v0 + (v1 - v0) * (concurrency - c0) / (c1 - c0)

    def estimate(self, concurrency: int, batched_tokens: int) -> Estimate:
        tpot = self._interpolate(concurrency, [(p.concurrency, p.tpot_ms) for p in self.points])
        ttfts = [(p.concurrency, p.ttft_ms) for p in self.points if p.ttft_ms is not None]
        ttft = self._interpolate(concurrency, ttfts) if ttfts else self.roofline.ttft_ms(concurrency, batched_tokens)
        top = self.points[-1].concurrency
        where = f"extrapolated past the measured c={top}" if concurrency > top else "interpolated"
        label = f"measured profile {self.origin} ({where}{'' if ttfts else '; TTFT from the roofline'})"
        return Estimate(tpot, ttft, label, self._max_rps(concurrency))

    def _max_rps(self, concurrency: int) -> float | None:
        rates = [(p.concurrency, p.output_tokens_per_s) for p in self.points if p.output_tokens_per_s]
        if not rates:
            return None
        # Past the largest measured concurrency throughput stays where it was (the engine is saturated).
        rate = rates[-1][1] if concurrency >= rates[-1][0] else self._interpolate(concurrency, rates)
        return rate / self.roofline.traffic.output_tokens_mean


def _optional_ms(raw: Mapping[str, Any], key: str, where: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"{where}: {key} must be a number > 0")
    return float(value)


def _point(raw: Mapping[str, Any], where: str) -> SpeedPoint:
    c = raw.get("concurrency")
    if not isinstance(c, int) or c < 1:
        raise ValueError(f"{where}: concurrency must be a whole number >= 1")
    tpot, rate, ttft = raw.get("tpot_ms"), raw.get("output_tokens_per_s"), raw.get("ttft_ms")
    if isinstance(tpot, int | float) and tpot > 0:
        tpot_ms = float(tpot)
    elif isinstance(rate, int | float) and rate > 0:
        # c sequences share the rate; TTFT is folded in, which overstates TPOT a little (safe side).
        tpot_ms = 1000.0 * c / rate
    else:
        raise ValueError(f"{where}: needs tpot_ms or output_tokens_per_s")
    ttft_ms = float(ttft) if isinstance(ttft, int | float) and ttft > 0 else None
    measured_rate = float(rate) if isinstance(rate, int | float) and rate > 0 else None
    batched = raw.get("max_num_batched_tokens")
    if batched is not None and (not isinstance(batched, int) or batched < 1):
        raise ValueError(f"{where}: max_num_batched_tokens must be a whole number >= 1")
    tails = _optional_ms(raw, "ttft_p99_ms", where), _optional_ms(raw, "tpot_p99_ms", where)
    return SpeedPoint(c, tpot_ms, ttft_ms, measured_rate, batched, *tails)


def parse_profile(data: Mapping[str, Any], gpu: str) -> tuple[dict[str, tuple[SpeedPoint, ...]], str | None]:
    """Points per variant id, and a note when the profile does not apply (another GPU)."""
    measured_on = data.get("gpu")
    if measured_on is not None and measured_on != gpu:
        return {}, f"profile measured on {measured_on}, not {gpu}: ignored, speeds are roofline estimates"
    variants = data.get("variants")
    if not isinstance(variants, Mapping):
        raise ValueError("profile: expected a 'variants' mapping of variant id -> list of points")
    out = {}
    for variant_id, raw_points in variants.items():
        variant_by_id(str(variant_id))  # a typo would otherwise leave the variant on the roofline unnoticed
        if not isinstance(raw_points, list) or not raw_points:
            raise ValueError(f"profile.variants.{variant_id}: expected a non-empty list of points")
        points = [_point(p, f"profile.variants.{variant_id}[{i}]") for i, p in enumerate(raw_points)]
        if len({p.concurrency for p in points}) != len(points):
            raise ValueError(f"profile.variants.{variant_id}: one point per concurrency")
        out[str(variant_id)] = tuple(sorted(points, key=lambda p: p.concurrency))
    return out, None
