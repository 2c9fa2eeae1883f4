"""The goal planner: which variant to serve on a GPU type under an SLO, and with what engine and
admission settings; every choice carries its reason (pure, stdlib only).

Per variant the GPU can run, that has a passing gate report (or is the unquantized baseline) and a
checkpoint to serve: the memory planner (serve_app.quantize.planner) gives the KV tokens one GPU
holds; a speed model (serve_app.quantize.speed: a measured profile, else the roofline) gives TPOT
and TTFT at a concurrency. ``max_num_seqs`` is, among the concurrencies that fit the KV cache and
whose estimated TPOT and TTFT stay within ``SLO_HEADROOM`` of the p99 targets, the one with the
most estimated goodput: that many sequences over the time one request takes. The chosen variant has the highest goodput,
where a lower-precision variant must win by ``Goal.min_gain``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from serve_app.models.shapes import ModelShape
from serve_app.quantize.flow_cap import FlowCap, in_flight_cap
from serve_app.quantize.gate_reports import GateVerdict, gate_reason
from serve_app.quantize.goal import Goal, Traffic
from serve_app.quantize.planner import GIB, GPUS, KV_BLOCK_TOKENS, Gpu, Plan, PlanRequest, plan
from serve_app.quantize.speed import Estimate, Measured, Roofline, SpeedPoint
from serve_app.quantize.variants import Variant, all_variants, support_note, unsupported_reason

SEQS_CAP = 1024  # the search's upper end for max_num_seqs
BATCHED_TOKEN_CHOICES = (2048, 4096, 8192, 16384)
# The estimates are means (and the roofline is optimistic) while the SLO is a p99: plan to 80% of it.
SLO_HEADROOM = 0.8
MAX_MODEL_LEN_STEP = 256


@dataclass(frozen=True)
class Dropped:
    variant: str
    reason: str


@dataclass
class VariantPlan:
    variant: Variant
    source: str
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_capacity_seqs: int
    estimate: Estimate
    goodput_rps: float  # over all replicas
    memory: Plan
    reasons: dict[str, str] = field(default_factory=dict)
    # The flow queue's in-flight cap per engine (serve_app.quantize.flow_cap) and the estimate there.
    flow_cap: FlowCap | None = None
    flow_estimate: Estimate | None = None


@dataclass
class GoalPlan:
    goal: Goal
    shape: ModelShape
    max_model_len: int
    candidates: list[VariantPlan]
    dropped: list[Dropped]
    chosen: VariantPlan | None
    choice_reason: str
    notes: list[str] = field(default_factory=list)


def max_model_len_for(goal: Goal) -> int:
    if goal.max_model_len:
        return goal.max_model_len
    t = goal.traffic
    longest = t.input_tokens + t.output_tokens_mean + 4 * t.output_tokens_spread
    return math.ceil(longest / MAX_MODEL_LEN_STEP) * MAX_MODEL_LEN_STEP


def seq_kv_tokens(goal: Goal) -> int:
    """KV a running sequence holds on average: prompt, mean output and one spread, in whole blocks."""
    t = goal.traffic
    tokens = t.input_tokens + t.output_tokens_mean + t.output_tokens_spread
    return math.ceil(tokens / KV_BLOCK_TOKENS) * KV_BLOCK_TOKENS


def batched_tokens_for(concurrency: int, traffic: Traffic, measured_with: int | None = None) -> int:
    """The smallest choice that holds a full decode batch plus one whole prompt (a new prompt
    prefills in one step) and the average step's tokens (prompts keep up with finishing requests).
    vLLM also needs it to be at least max_num_seqs, which both terms exceed. A profile's TPOT and
    throughput were measured with the engine's own setting: where that holds the need, keep it, so
    the engine runs as it was measured (a smaller one would leave measured throughput unused)."""
    steady = concurrency * (1 + traffic.input_tokens / traffic.output_tokens_mean)
    need = max(concurrency + traffic.input_tokens, math.ceil(steady))
    if measured_with and measured_with >= need:
        return measured_with
    return next((b for b in BATCHED_TOKEN_CHOICES if b >= need), BATCHED_TOKEN_CHOICES[-1])


def _measured_with(speed: Roofline | Measured) -> int | None:
    return speed.batched_tokens if isinstance(speed, Measured) else None


def memory_plan(goal: Goal, shape: ModelShape, variant: Variant, seqs: int, batched: int) -> Plan:
    req = PlanRequest(
        shape=shape,
        gpu=GPUS[goal.gpu],
        max_model_len=max_model_len_for(goal),
        quantization=variant.planner_quantization,
        kv_cache_dtype=variant.kv_cache_dtype,
        gpu_memory_utilization=goal.gpu_memory_utilization,
        max_num_batched_tokens=batched,
        max_num_seqs=seqs,
    )
    return plan(req)


def _limit(goal: Goal, est: Estimate) -> str | None:
    if est.tpot_ms > goal.slo.tpot_p99_ms * SLO_HEADROOM:
        return "the TPOT target"
    if est.ttft_ms > goal.slo.ttft_p99_ms * SLO_HEADROOM:
        return "the TTFT target"
    return None


def goodput_rps(goal: Goal, concurrency: int, est: Estimate) -> float:
    """Requests per second over all GPUs when ``concurrency`` requests run on each and all meet the SLO."""
    request_s = (est.ttft_ms + goal.traffic.output_tokens_mean * est.tpot_ms) / 1000
    per_gpu = concurrency / request_s
    return min(per_gpu, est.max_rps or per_gpu) * goal.gpus


@dataclass(frozen=True)
class Search:
    best: int  # the concurrency with the most estimated goodput (0: none meets the goal)
    largest: int  # the largest concurrency within the KV cache and the SLO targets
    bound: str  # what stops the concurrency above ``largest``


def _search(goal: Goal, shape: ModelShape, variant: Variant, speed: Roofline | Measured) -> Search:
    """Every concurrency up to the cap, kept when it fits the KV cache and meets the SLO targets;
    the best is the one with the most goodput (usually the largest, unless a measured profile
    shows throughput falling past saturation)."""
    best, best_rate, largest, bound = 0, 0.0, 0, f"the search cap of {SEQS_CAP}"
    for c in range(SEQS_CAP, 0, -1):
        batched = batched_tokens_for(c, goal.traffic, _measured_with(speed))
        capacity = memory_plan(goal, shape, variant, c, batched).kv_cache_tokens // seq_kv_tokens(goal)
        est = speed.estimate(c, batched)
        failed = "the KV cache" if c > capacity else _limit(goal, est)
        if failed:
            bound = bound if largest else failed
            continue
        largest = largest or c
        rate = goodput_rps(goal, c, est)
        if rate > best_rate:
            best, best_rate = c, rate
    return Search(best, largest, bound)


def _speed_model(goal: Goal, shape: ModelShape, variant: Variant, points: tuple[SpeedPoint, ...] | None,
                 origin: str) -> Roofline | Measured:  # fmt: skip
    mem = memory_plan(goal, shape, variant, 1, BATCHED_TOKEN_CHOICES[0])
    roofline = Roofline(GPUS[goal.gpu], variant, shape, mem.weight_bytes_total, mem.kv_bytes_per_token, goal.traffic)
    return Measured(points, roofline, origin) if points else roofline


def _batched_reason(goal: Goal, vp: VariantPlan, measured_with: int | None) -> str:
    t = goal.traffic
    need = (
        f"max_num_seqs decodes plus one {t.input_tokens}-token prompt (it prefills in one step) and the average "
        f"step's prompt share ({t.input_tokens}/{t.output_tokens_mean} prompt tokens per output token)"
    )
    if measured_with and vp.max_num_batched_tokens == measured_with:
        return f"{measured_with}: the engine setting the profile measured TPOT and throughput with; it holds {need}"
    return f"{vp.max_num_batched_tokens}: the smallest of {list(BATCHED_TOKEN_CHOICES)} holding {need}"


def _reasons(goal: Goal, vp: VariantPlan, gate: str, search: Search, measured_with: int | None) -> dict[str, str]:
    m, est, t = vp.memory, vp.estimate, goal.traffic
    return {
        "gate": gate,
        "memory": (
            f"weights {m.weight_bytes_per_gpu / GIB:.2f} GiB, KV {m.kv_bytes_per_token / 1024:.0f} KiB/token "
            f"({vp.variant.kv_cache_dtype}) -> {m.kv_cache_tokens:,} KV tokens at gpu_memory_utilization "
            f"{goal.gpu_memory_utilization} -> {vp.kv_capacity_seqs} sequences of {seq_kv_tokens(goal)} tokens "
            "(prompt + mean output + one spread)"
        ),
        "max_num_seqs": (
            f"{vp.max_num_seqs}: the most estimated goodput among concurrencies within the KV cache whose "
            f"TPOT <= {goal.slo.tpot_p99_ms * SLO_HEADROOM:g} ms and TTFT <= {goal.slo.ttft_p99_ms * SLO_HEADROOM:g} "
            f"ms ({SLO_HEADROOM:.0%} of the p99 SLO; here {est.tpot_ms:.1f} ms and {est.ttft_ms:.0f} ms); "
            + (f"the largest such is {search.largest}, " if search.largest != vp.max_num_seqs else "")
            + f"the next one up is stopped by {search.bound}"
        ),
        "max_num_batched_tokens": _batched_reason(goal, vp, measured_with),
        "speed": est.source,
        "goodput": (
            f"{vp.goodput_rps:.2f} requests/s estimated = {vp.max_num_seqs} x {goal.gpus} GPU(s) / "
            f"(TTFT + {t.output_tokens_mean} x TPOT)"
            + (
                f", at most the measured {est.max_rps:.1f} requests/s per GPU at this concurrency"
                if est.max_rps
                else ""
            )
        ),
    }


def plan_variant(goal: Goal, shape: ModelShape, variant: Variant, source: str, gate: str,
                 speed: Roofline | Measured) -> VariantPlan | Dropped:  # fmt: skip
    search = _search(goal, shape, variant, speed)
    if search.best == 0:
        return Dropped(variant.id, f"no concurrency fits one {goal.gpu} and meets the SLO ({search.bound})")
    seqs = search.best
    batched = batched_tokens_for(seqs, goal.traffic, _measured_with(speed))
    memory = memory_plan(goal, shape, variant, seqs, batched)
    est = speed.estimate(seqs, batched)
    capacity = memory.kv_cache_tokens // seq_kv_tokens(goal)
    vp = VariantPlan(variant, source, seqs, batched, capacity, est, goodput_rps(goal, seqs, est), memory)
    vp.reasons = _reasons(goal, vp, gate, search, _measured_with(speed))
    vp.flow_cap = in_flight_cap(speed.points if isinstance(speed, Measured) else None, goal.slo, SLO_HEADROOM, seqs)
    vp.flow_estimate = speed.estimate(vp.flow_cap.seqs, batched)
    if vp.flow_cap.seqs < seqs:
        _bound_by_flow_cap(goal, vp, vp.flow_cap.seqs, vp.flow_estimate)
    return vp


def _bound_by_flow_cap(goal: Goal, vp: VariantPlan, cap: int, at_cap: Estimate) -> None:
    """The goodput the flow cap lets through, which is what variants are compared on: the engine
    never runs more than the cap, so the estimate at ``max_num_seqs`` overstates it (on the H200,
    benchmarks/results/goodput-h200-r8: the estimate at the cap matched the measured best goodput)."""
    rate = goodput_rps(goal, cap, at_cap)
    vp.reasons["goodput"] = (
        f"{rate:.2f} requests/s estimated at the flow cap of {cap} in flight per engine, which bounds what runs "
        f"(at max_num_seqs: {vp.reasons['goodput']})"
    )
    vp.goodput_rps = rate


def _source(goal: Goal, variant: Variant, verdicts: Mapping[str, GateVerdict]) -> str | None:
    if not variant.needs_checkpoint:
        return goal.source
    verdict = verdicts.get(variant.id)
    return goal.checkpoints.get(variant.weights) or (verdict.checkpoint if verdict else None)


Kept = tuple[Variant, str, str]  # the variant, its checkpoint, its gate reason


def screen(goal: Goal, gpu: Gpu, verdicts: Mapping[str, GateVerdict]) -> tuple[list[Kept], list[Dropped]]:
    """Variants worth planning, each with its checkpoint and gate reason, and the dropped ones with why."""
    kept, dropped = [], []
    for v in all_variants():
        if goal.variants and v.id not in goal.variants:
            dropped.append(Dropped(v.id, "not among the goal's variants"))
            continue
        unsupported = unsupported_reason(v, gpu)
        passed, gate = gate_reason(v, verdicts)
        source = _source(goal, v, verdicts)
        if unsupported:
            dropped.append(Dropped(v.id, unsupported))
        elif not passed:
            dropped.append(Dropped(v.id, gate))
        elif source is None:
            dropped.append(Dropped(v.id, f"no {v.weights} checkpoint: give checkpoints.{v.weights} in the goal"))
        else:
            kept.append((v, source, gate))
    return kept, dropped


def choose(candidates: list[VariantPlan], min_gain: float) -> tuple[VariantPlan | None, str]:
    """Walk from the most precise variant down; a less precise one replaces the pick only when its
    estimated goodput is higher by more than ``min_gain``."""
    ordered = sorted(candidates, key=lambda vp: vp.variant.precision_rank)
    if not ordered:
        return None, "no variant left to serve"
    best = ordered[0]
    reason = f"the most precise variant left; no less precise one gains more than {min_gain:.0%} goodput"
    for vp in ordered[1:]:
        if vp.goodput_rps > best.goodput_rps * (1 + min_gain):
            gain = vp.goodput_rps / best.goodput_rps - 1
            reason = (
                f"estimated goodput {vp.goodput_rps:.2f} requests/s, {gain:.0%} above {best.variant.id} "
                f"(a less precise variant must gain more than {min_gain:.0%})"
            )
            best = vp
    return best, reason


def plan_goal(goal: Goal, shape: ModelShape, verdicts: Mapping[str, GateVerdict],
              profile: Mapping[str, tuple[SpeedPoint, ...]], profile_origin: str = "") -> GoalPlan:  # fmt: skip
    gpu = GPUS[goal.gpu]
    kept, dropped = screen(goal, gpu, verdicts)
    candidates, notes = [], []
    for variant, source, gate in kept:
        speed = _speed_model(goal, shape, variant, profile.get(variant.id), profile_origin)
        result = plan_variant(goal, shape, variant, source, gate, speed)
        if isinstance(result, Dropped):
            dropped.append(result)
            continue
        note = support_note(variant, gpu)
        if note:
            result.reasons["hardware"] = note
        candidates.append(result)
    if candidates and len({c.estimate.source.split(" (")[0] for c in candidates}) > 1:
        notes.append("speeds mix measured profiles and roofline estimates: compare those variants with care")
    chosen, why = choose(candidates, goal.min_gain)
    return GoalPlan(goal, shape, max_model_len_for(goal), candidates, dropped, chosen, why, notes)
