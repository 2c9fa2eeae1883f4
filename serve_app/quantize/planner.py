"""Capacity planner: weight memory, KV cache per token, KV budget, concurrency and the smallest TP.

Pure arithmetic (stdlib only, no ray/vllm/torch). Every number is an estimate of what vLLM will
allocate on one GPU of a tensor-parallel group:

* weights: linear layers at the quantized width (bits per weight incl. scales/zero points),
  embeddings, LM head and norms at the activation dtype; split evenly across TP ranks.
* KV cache per token (GQA-aware): ``2 (K and V) x layers x kv_heads x head_dim x kv dtype bytes``;
  a rank holds ``max(1, kv_heads / tp)`` heads (vLLM replicates KV heads when tp > kv_heads).
* reserve, subtracted from ``memory x gpu_memory_utilization`` before the KV cache:
  ``FIXED_OVERHEAD_BYTES`` (CUDA context, cuBLAS/NCCL workspaces, CUDA-graph pools) plus the peak
  activation working set of one scheduler step of ``max_num_batched_tokens`` tokens
  (residual stream, qkv, MLP intermediate) and the fp32 logits of ``max_num_seqs`` sampled rows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from serve_app.models.shapes import ModelShape

MIB = 1 << 20
GIB = 1 << 30
FIXED_OVERHEAD_BYTES = int(1.5 * GIB)
KV_BLOCK_TOKENS = 16  # vLLM allocates KV in blocks; a sequence occupies whole blocks
TP_CANDIDATES = (1, 2, 4, 8)
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
KV_DTYPE_BYTES = {"fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}


@dataclass(frozen=True)
class Gpu:
    """One GPU model. Bandwidth and dense tensor-core peaks are the vendors' spec-sheet figures
    (SXM parts); the goal planner's roofline estimate divides by them when no profile is given."""

    name: str
    memory_bytes: int  # the total nvidia-smi reports (the marketing "GB" is rounder)
    fp8_compute: bool  # FP8 tensor cores (Hopper and later)
    memory_bandwidth_gbps: float = 0.0  # GB/s (10^9 bytes) of HBM bandwidth
    bf16_tflops: float = 0.0  # dense 16-bit tensor-core peak
    int8_tops: float = 0.0  # dense int8 tensor-core peak
    fp8_tflops: float = 0.0  # dense FP8 tensor-core peak; 0 = none


GPUS: dict[str, Gpu] = {
    g.name: g
    for g in (
        # name, memory, FP8 tensor cores, HBM GB/s, bf16 TFLOPS, int8 TOPS, FP8 TFLOPS
        Gpu("a100-40gb", 40_960 * MIB, False, 1555, 312, 624),
        Gpu("a100-80gb", 81_920 * MIB, False, 2039, 312, 624),
        Gpu("h100-80gb", 81_559 * MIB, True, 3350, 989, 1979, 1979),
        Gpu("h200", 143_771 * MIB, True, 4800, 989, 1979, 1979),
    )
}


@dataclass(frozen=True)
class WeightFormat:
    """How one quantization stores linear-layer weights (bits per weight, scales included)."""

    bits: float
    moe_experts_only: bool = False
    note: str = ""


def weight_format(quantization: str | None, group_size: int) -> WeightFormat:
    """Bits per quantized weight. Group-wise int4 pays a 16-bit scale (+ a 4-bit zero point when
    asymmetric) per ``group_size`` weights; per-channel 8-bit formats pay ~nothing for scales."""
    group = group_size if group_size > 0 else 4096
    if quantization in (None, "none"):
        return WeightFormat(bits=0)  # 0 = keep the activation dtype
    if quantization == "awq":
        return WeightFormat(bits=4 + 20 / group)
    if quantization in ("gptq", "compressed-tensors"):
        return WeightFormat(bits=4 + 16 / group, note="compressed-tensors assumed W4A16 (symmetric, grouped)")
    if quantization in ("w8a8-int8", "fp8-dynamic", "fp8"):
        return WeightFormat(bits=8)
    if quantization == "bitsandbytes":
        return WeightFormat(bits=4 + 32 / 64, note="bitsandbytes in-flight: 4-bit NF4, fp32 absmax per 64 weights")
    if quantization == "int8-weight-only":
        return WeightFormat(
            bits=8,
            moe_experts_only=True,
            note="vLLM's int8_per_channel_weight_only quantizes MoE experts only; dense layers keep their dtype",
        )
    raise ValueError(f"unknown quantization {quantization!r}")


@dataclass(frozen=True)
class PlanRequest:
    shape: ModelShape
    gpu: Gpu
    max_model_len: int
    tensor_parallel_size: int = 1
    quantization: str | None = None
    group_size: int = 128
    dtype: str = "bfloat16"
    kv_cache_dtype: str = "auto"
    gpu_memory_utilization: float = 0.9
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    checkpoint_weight_bytes: int | None = None  # measured from files, overrides the formula


@dataclass
class Plan:
    model: str
    gpu: str
    tensor_parallel_size: int
    quantization: str
    max_model_len: int
    weight_bytes_total: int
    weight_bytes_per_gpu: int
    kv_bytes_per_token: int
    kv_bytes_per_token_per_gpu: int
    reserve_bytes_per_gpu: int
    usable_bytes_per_gpu: int
    kv_budget_bytes_per_gpu: int
    kv_cache_tokens: int
    max_concurrent_sequences: int
    fits: bool
    tp_valid: bool
    smallest_fitting_tp: int | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def dtype_bytes(dtype: str) -> int:
    return DTYPE_BYTES.get(dtype, 2)


def kv_bytes_per_token(shape: ModelShape, kv_cache_dtype: str, dtype: str, tp: int = 1) -> int:
    per_element = KV_DTYPE_BYTES.get(kv_cache_dtype, dtype_bytes(dtype))
    heads_per_rank = max(1, shape.num_kv_heads // tp)
    return 2 * shape.num_layers * heads_per_rank * shape.head_dim * per_element


def weight_bytes(shape: ModelShape, quantization: str | None, dtype: str, group_size: int = 128) -> int:
    fmt = weight_format(quantization, group_size)
    base = dtype_bytes(dtype)
    unquantized_params = shape.embedding_params + shape.lm_head_params + shape.norm_params
    if fmt.bits == 0 or (fmt.moe_experts_only and shape.num_experts == 0):
        return shape.total_params * base
    linear = shape.linear_params
    if fmt.moe_experts_only:
        experts = shape.num_layers * 3 * shape.hidden_size * shape.intermediate_size * shape.num_experts
        return (unquantized_params + linear - experts) * base + math.ceil(experts * fmt.bits / 8)
    return unquantized_params * base + math.ceil(linear * fmt.bits / 8)


def tp_is_valid(shape: ModelShape, tp: int) -> bool:
    """vLLM shards attention heads evenly; KV heads are split or, when fewer than ranks, replicated."""
    kv = shape.num_kv_heads
    return shape.num_attention_heads % tp == 0 and (kv % tp == 0 if kv >= tp else tp % kv == 0)


def reserve_bytes(req: PlanRequest) -> int:
    s, tp = req.shape, req.tensor_parallel_size
    act = dtype_bytes(req.dtype)
    q_width = s.num_attention_heads * s.head_dim
    kv_width = s.num_kv_heads * s.head_dim
    per_token = 4 * s.hidden_size + (q_width + 2 * kv_width) // tp + 2 * s.intermediate_size // tp
    activations = req.max_num_batched_tokens * per_token * act
    logits = req.max_num_seqs * s.vocab_size * 4
    return FIXED_OVERHEAD_BYTES + activations + logits


def plan(req: PlanRequest) -> Plan:
    s, tp = req.shape, req.tensor_parallel_size
    total_weights = req.checkpoint_weight_bytes or weight_bytes(s, req.quantization, req.dtype, req.group_size)
    per_gpu_weights = math.ceil(total_weights / tp)
    kv_token_gpu = kv_bytes_per_token(s, req.kv_cache_dtype, req.dtype, tp)
    usable = int(req.gpu.memory_bytes * req.gpu_memory_utilization)
    reserve = reserve_bytes(req)
    budget = max(0, usable - per_gpu_weights - reserve)
    tokens = budget // kv_token_gpu
    seq_tokens = math.ceil(req.max_model_len / KV_BLOCK_TOKENS) * KV_BLOCK_TOKENS
    concurrent = tokens // seq_tokens
    valid = tp_is_valid(s, tp)
    return Plan(
        model=s.name,
        gpu=req.gpu.name,
        tensor_parallel_size=tp,
        quantization=req.quantization or "none",
        max_model_len=req.max_model_len,
        weight_bytes_total=total_weights,
        weight_bytes_per_gpu=per_gpu_weights,
        kv_bytes_per_token=kv_bytes_per_token(s, req.kv_cache_dtype, req.dtype, 1),
        kv_bytes_per_token_per_gpu=kv_token_gpu,
        reserve_bytes_per_gpu=reserve,
        usable_bytes_per_gpu=usable,
        kv_budget_bytes_per_gpu=budget,
        kv_cache_tokens=tokens,
        max_concurrent_sequences=concurrent,
        fits=valid and concurrent >= 1,
        tp_valid=valid,
        notes=plan_notes(req, concurrent),
    )


def plan_notes(req: PlanRequest, concurrent: int) -> list[str]:
    notes = []
    if req.checkpoint_weight_bytes:
        notes.append("weights measured from the checkpoint's files (unquantized parts may be stored wider than served)")
    fmt_note = weight_format(req.quantization, req.group_size).note
    if fmt_note:
        notes.append(fmt_note)
    if req.quantization in ("fp8", "fp8-dynamic") and not req.gpu.fp8_compute:
        notes.append(f"{req.gpu.name} has no FP8 tensor cores: vLLM runs FP8 as weight-only (W8A16, Marlin)")
    if req.kv_cache_dtype.startswith("fp8") and not req.gpu.fp8_compute:
        notes.append("fp8 KV cache on a pre-Hopper GPU stores fp8 but computes attention in 16-bit")
    if req.shape.max_position_embeddings and req.max_model_len > req.shape.max_position_embeddings:
        notes.append(f"max_model_len exceeds the model's {req.shape.max_position_embeddings} positions")
    if concurrent > req.max_num_seqs:
        notes.append(f"the scheduler runs at most max_num_seqs={req.max_num_seqs} sequences at once")
    if not tp_is_valid(req.shape, req.tensor_parallel_size):
        notes.append(f"tp={req.tensor_parallel_size} does not divide the attention/KV heads")
    return notes


def plan_with_smallest_tp(req: PlanRequest) -> Plan:
    """The plan at the requested TP, plus the smallest TP (1, 2, 4, 8) at which one full-length
    sequence fits in the KV budget."""
    result = plan(req)
    for tp in TP_CANDIDATES:
        candidate = plan(PlanRequest(**{**asdict_shallow(req), "tensor_parallel_size": tp}))
        if candidate.fits:
            result.smallest_fitting_tp = tp
            break
    return result


def asdict_shallow(req: PlanRequest) -> dict[str, Any]:
    return {name: getattr(req, name) for name in req.__dataclass_fields__}
