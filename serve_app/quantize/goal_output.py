"""A goal plan as a deployable serve config (YAML with the reasons as comments) and a ``plan.json``
sidecar with the whole table (pure: PyYAML only, no Ray/vLLM).

The config has the schema of ``configs/*.yaml`` (``serve_app.config.AppConfig`` under ``args``);
the command validates it with that model before writing it.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import asdict, dataclass
from typing import Any

import yaml

from serve_app.models.shapes import PRESETS
from serve_app.quantize.flow_cap import FlowCap
from serve_app.quantize.goal import Goal
from serve_app.quantize.goal_planner import SLO_HEADROOM, GoalPlan, VariantPlan, goodput_rps
from serve_app.quantize.speed import Estimate

REPLICAS_PER_GPU = 1
REPLICAS_PER_GPU_REASON = (
    "one engine per GPU: every engine reads all the weights each decode step, so two engines on a GPU read "
    "them twice for the same sequences and split the KV cache"
)
# The router batching the shipped GPU configs use (configs/llama2-7b-awq-a100.yaml says why).
BATCHING = {"max_batch_size": 64, "batch_timeout_ms": 2, "at_once_when_idle": True}
REPLICA_CPUS = 4
# The token budget's multiple of the planned cost. At 2 only the flow queue's count (max_num_seqs)
# bounded the engine, and on the H200 ladder the admitted requests' TTFT then ran past the target
# (benchmarks/results/goodput-h200-r5/README.md). The flow cap is now planned from a profile's tail
# latencies where it has them (serve_app/quantize/flow_cap.py), but no profile with them has been
# measured on a GPU yet, so the budget stays the guard that kept the engine's depth low.
TOKEN_BUDGET_MARGIN = 1


@dataclass(frozen=True)
class Admission:
    max_queued_requests: int  # per router replica
    max_queued_tokens: int  # per router replica
    request_cost_tokens: int
    max_ongoing_requests: int  # per model replica
    reason: str


def ttft_slack_s(goal: Goal, est: Estimate) -> float:
    """How long a request may wait to start and still meet the TTFT target (with the SLO headroom)."""
    return max(0.0, goal.slo.ttft_p99_ms * SLO_HEADROOM - est.ttft_ms) / 1000


def admission_for(goal: Goal, vp: VariantPlan) -> Admission:
    """Room for every running sequence plus the waiting requests that still start within the TTFT
    target: past that, a request would miss the SLO anyway, so the router refuses it at once."""
    t, replicas = goal.traffic, goal.gpus * REPLICAS_PER_GPU
    running = vp.max_num_seqs * replicas
    slack_s = ttft_slack_s(goal, vp.estimate)
    waiting = math.floor(slack_s * vp.goodput_rps)
    per_router = math.ceil((running + waiting) / goal.router_replicas)
    cost = t.input_tokens + t.admission_output_tokens
    tokens = per_router * cost * TOKEN_BUDGET_MARGIN
    reason = (
        f"router.max_queued_tokens {tokens:,} = {per_router} requests x {cost} tokens (prompt + the max_tokens "
        f"admission charges: mean output + 2 spreads) x {TOKEN_BUDGET_MARGIN} (at 2x, engines filled to "
        f"max_num_seqs missed the TTFT target on the H200 ladder: docs/planner.md); {running} running (max_num_seqs x "
        f"{replicas} replicas) + {waiting} waiting, the ones that finish within the TTFT slack "
        f"({slack_s * 1000:.0f} ms at {vp.goodput_rps:.1f} requests/s), split over {goal.router_replicas} "
        "router replica(s), each with its own budget"
    )
    return Admission(per_router, tokens, cost, vp.max_num_seqs + math.ceil(waiting / replicas), reason)


@dataclass(frozen=True)
class FlowPlan:
    max_in_flight: int  # per router replica: requests on the engines at once
    max_waiting: int  # per router replica
    max_wait_s: float  # the queue deadline: a request that cannot start within it is refused
    engine_cap: int  # requests in flight per engine
    cap_from_profile: bool  # False: the cap is max_num_seqs (no tail latencies profiled)
    reason: str


def flow_for(goal: Goal, vp: VariantPlan) -> FlowPlan:
    """Time the waiting budget instead of only counting it. The count alone lets a burst queue
    requests behind the engines' running sequences that then start past the TTFT target; the router's
    flow queue keeps each engine at the planned in-flight cap (the profile's tail latencies decide
    it where measured: serve_app.quantize.flow_cap; else ``max_num_seqs``) and refuses at arrival
    (503 with Retry-After) a request its measured release rate says would wait past the deadline,
    and drops one that does. The waiting count and deadline come from the estimate at that cap; the
    deadline is half the TTFT slack: the other half is the engine's own time to the first token once
    a request starts (its prefill shares steps with the running batch's decodes)."""
    replicas = goal.gpus * REPLICAS_PER_GPU
    cap = vp.flow_cap or FlowCap(vp.max_num_seqs, False, f"max_num_seqs ({vp.max_num_seqs})")
    est = vp.flow_estimate or vp.estimate
    slack_s = ttft_slack_s(goal, est)
    rate = goodput_rps(goal, cap.seqs, est)
    in_flight = math.ceil(cap.seqs * replicas / goal.router_replicas)
    waiting = max(1, math.ceil(slack_s * rate / goal.router_replicas))
    max_wait_s = round(max(0.05, slack_s / 2), 3)
    reason = (
        f"flow_control: {in_flight} in flight per router replica (the cap per engine x {replicas} replicas / "
        f"{goal.router_replicas} router replica(s)), {waiting} waiting (the TTFT slack at {rate:.1f} requests/s), "
        f"queue deadline {max_wait_s * 1000:.0f} ms (half the {slack_s * 1000:.0f} ms TTFT slack at the cap; the "
        "other half is the engine's first step): a request that would start later is refused at once with a 503 "
        f"and Retry-After instead of missing the TTFT target. Cap per engine: {cap.reason}"
    )
    return FlowPlan(in_flight, waiting, max_wait_s, cap.seqs, cap.from_profile, reason)


def flow_control_entry(flow: FlowPlan) -> dict[str, Any]:
    return {
        "max_in_flight": flow.max_in_flight,
        "max_waiting": flow.max_waiting,
        "interactive": {"max_wait_s": flow.max_wait_s},
    }


def model_entry(gp: GoalPlan, vp: VariantPlan, admission: Admission) -> dict[str, Any]:
    goal, t = gp.goal, gp.goal.traffic
    entry: dict[str, Any] = {"id": goal.model_id, "source": vp.source}
    if goal.model.lower() in PRESETS:
        entry["shape_preset"] = goal.model.lower()
    entry["dtype"] = "bfloat16"
    if vp.variant.config_quantization:
        entry["quantization"] = vp.variant.config_quantization
    entry |= {
        "kv_cache_dtype": vp.variant.kv_cache_dtype,
        "max_model_len": gp.max_model_len,
        "engine_options": {
            "gpu_memory_utilization": round(goal.gpu_memory_utilization / REPLICAS_PER_GPU, 4),
            "max_num_seqs": vp.max_num_seqs,
            "max_num_batched_tokens": vp.max_num_batched_tokens,
        },
        "num_replicas": goal.gpus * REPLICAS_PER_GPU,
        "max_ongoing_requests": admission.max_ongoing_requests,
        "default_max_tokens": t.admission_output_tokens,
        # nothing longer fits the context anyway
        "max_tokens_limit": max(gp.max_model_len, t.admission_output_tokens),
        "batching": dict(BATCHING),
        "ray_actor_options": {"num_cpus": REPLICA_CPUS, "num_gpus": 1 / REPLICAS_PER_GPU},
    }
    return entry


def serve_config(gp: GoalPlan) -> dict[str, Any]:
    """The Ray Serve config of the chosen variant; raises ValueError when nothing was chosen."""
    vp = gp.chosen
    if vp is None:
        raise ValueError(f"nothing to deploy: {gp.choice_reason}")
    admission = admission_for(gp.goal, vp)
    router = {
        "num_replicas": gp.goal.router_replicas,
        "max_queued_requests": admission.max_queued_requests,
        "max_queued_tokens": admission.max_queued_tokens,
    }
    app = {
        "name": "serve-app",
        "route_prefix": "/",
        "import_path": "serve_app.app:build_app",
        "args": {
            "models": [model_entry(gp, vp, admission)],
            "router": router,
            "flow_control": flow_control_entry(flow_for(gp.goal, vp)),
        },
    }
    return {"proxy_location": "EveryNode", "http_options": {"host": "0.0.0.0", "port": 8000}, "applications": [app]}


def _comment(text: str, indent: int = 0) -> list[str]:
    prefix = "# " + " " * indent
    return textwrap.wrap(text, 118, initial_indent=prefix, subsequent_indent=prefix + "  ") or ["#"]


def header(gp: GoalPlan) -> list[str]:
    goal, vp = gp.goal, gp.chosen
    t = goal.traffic
    lines = [f"# Planned by `serve-app plan --goal` for {goal.model} on {goal.gpus} x {goal.gpu}."]
    lines += _comment(
        f"Goal: TTFT p99 <= {goal.slo.ttft_p99_ms:g} ms, TPOT p99 <= {goal.slo.tpot_p99_ms:g} ms; traffic "
        f"{t.input_tokens} input / {t.output_tokens_mean} output tokens (spread {t.output_tokens_spread})."
    )
    if vp is None:
        return lines
    lines += _comment(f"Variant {vp.variant.id}: {gp.choice_reason}")
    for key, reason in vp.reasons.items():
        lines += _comment(f"{key}: {reason}", 2)
    lines += _comment(f"admission: {admission_for(goal, vp).reason}", 2)
    lines += _comment(flow_for(goal, vp).reason, 2)
    lines += _comment(f"replicas per GPU {REPLICAS_PER_GPU}: {REPLICAS_PER_GPU_REASON}", 2)
    lines += _comment(f"router batching {BATCHING}: the shipped GPU configs' setting", 2)
    lines.append("# Other candidates (estimated goodput):")
    for other in gp.candidates:
        if other is not vp:
            lines += _comment(f"{other.variant.id}: {other.goodput_rps:.1f} requests/s at max_num_seqs "
                              f"{other.max_num_seqs} ({other.estimate.source.split(' (')[0]})", 2)  # fmt: skip
    lines.append("# Dropped:")
    for d in gp.dropped:
        lines += _comment(f"{d.variant}: {d.reason}", 2)
    lines += [line for note in gp.notes for line in _comment(f"note: {note}")]
    return lines


def render_yaml(gp: GoalPlan, config: dict[str, Any]) -> str:
    body = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    return "\n".join(header(gp)) + "\n" + body


def candidate_dict(vp: VariantPlan) -> dict[str, Any]:
    return {
        "variant": vp.variant.id,
        "source": vp.source,
        "max_num_seqs": vp.max_num_seqs,
        "max_num_batched_tokens": vp.max_num_batched_tokens,
        "kv_capacity_seqs": vp.kv_capacity_seqs,
        "tpot_ms": round(vp.estimate.tpot_ms, 3),
        "ttft_ms": round(vp.estimate.ttft_ms, 3),
        "goodput_rps": round(vp.goodput_rps, 3),
        "flow_cap": asdict(vp.flow_cap) if vp.flow_cap else None,
        "speed_source": vp.estimate.source,
        "reasons": dict(vp.reasons),
        "memory": vp.memory.to_dict(),
    }


def plan_json(gp: GoalPlan) -> dict[str, Any]:
    vp = gp.chosen
    admission = admission_for(gp.goal, vp) if vp else None
    return {
        "goal": asdict(gp.goal),
        "chosen": vp.variant.id if vp else None,
        "choice_reason": gp.choice_reason,
        "max_model_len": gp.max_model_len,
        "slo_headroom": SLO_HEADROOM,
        "replicas_per_gpu": {"value": REPLICAS_PER_GPU, "reason": REPLICAS_PER_GPU_REASON},
        "admission": asdict(admission) if admission else None,
        "flow_control": asdict(flow_for(gp.goal, vp)) if vp else None,
        "candidates": [candidate_dict(c) for c in gp.candidates],
        "dropped": [[d.variant, d.reason] for d in gp.dropped],
        "notes": list(gp.notes),
    }
