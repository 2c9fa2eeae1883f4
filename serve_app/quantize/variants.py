"""Serving variants the goal planner weighs, and which ones a GPU type runs (pure, stdlib only).

A variant is a weight format and a KV-cache dtype. Weight formats, highest precision first:
bf16 (the unquantized baseline); FP8 from an FP8_DYNAMIC checkpoint (``fp8-dynamic``: one weight
scale per output channel, activations scaled per token at run time); FP8 from vLLM's online
quantization of the bf16 checkpoint (``fp8``: one scale per weight tensor, activations scaled per
tensor at run time, so one outlier token coarsens every other token's scale); W8A8 int8, AWQ int4
and GPTQ int4. ``fp8-dynamic`` and the last three need a pre-quantized checkpoint, e.g. from
``serve-app quantize``. Each comes with the KV cache in the model dtype or in FP8.

Hardware rules, as vLLM 0.32's CUDA code has them:

* FP8 weights need FP8 tensor cores (SM89+). On an A100 (SM80) vLLM falls back to weight-only
  FP8 (Marlin W8A16): the memory saving stays, the compute saving does not, and W8A8 int8 or int4
  give the same memory saving with kernels A100s do have. The planner drops FP8 weights there.
* FP8 KV cache on an A100 is kept: vLLM's FlashAttention backend only reads an FP8 KV cache with
  FlashAttention 3 (SM90), and its Triton backend refuses one below SM89 ("FP8 KV cache is not
  supported by the Triton attention backend on ... native FP8 (fp8e4nv) requires SM89+"), but its
  FlashInfer backend, next in vLLM's SM80 order, stores FP8 and dequantizes to 16-bit inside the
  kernel. So it runs there, on FlashInfer, saving KV memory but no attention compute.
* W8A8 int8 runs on int8 tensor cores (SM75+), AWQ/GPTQ int4 on Marlin (SM80+): every GPU here.
"""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.quantize.planner import Gpu

WEIGHT_FORMATS = ("bf16", "fp8-dynamic", "fp8", "w8a8", "awq", "gptq")  # highest precision first
FP8_WEIGHTS = frozenset({"fp8-dynamic", "fp8"})  # both need FP8 tensor cores
KV_DTYPES = ("auto", "fp8")  # auto = the model dtype
CHECKPOINT_FORMATS = frozenset({"fp8-dynamic", "w8a8", "awq", "gptq"})
# The planner's names for the weight formats (serve_app.quantize.planner.weight_format).
PLANNER_QUANTIZATION: dict[str, str | None] = {
    "bf16": None,
    "fp8-dynamic": "fp8-dynamic",
    "fp8": "fp8",
    "w8a8": "w8a8-int8",
    "awq": "awq",
    "gptq": "gptq",
}
A100_FP8_KV_NOTE = (
    "FP8 KV cache on an A100 runs on vLLM's FlashInfer attention backend (FlashAttention 2 reads no FP8 KV and "
    "the Triton backend refuses it below SM89): it halves KV memory, attention still computes in 16-bit"
)


@dataclass(frozen=True)
class Variant:
    weights: str  # one of WEIGHT_FORMATS
    kv: str = "auto"  # one of KV_DTYPES

    @property
    def id(self) -> str:
        """The name gate reports and profiles use: ``awq``, ``awq-fp8kv``, ..."""
        return self.weights if self.kv == "auto" else f"{self.weights}-fp8kv"

    @property
    def is_baseline(self) -> bool:
        return self.weights == "bf16" and self.kv == "auto"

    @property
    def needs_checkpoint(self) -> bool:
        return self.weights in CHECKPOINT_FORMATS

    @property
    def planner_quantization(self) -> str | None:
        return PLANNER_QUANTIZATION[self.weights]

    @property
    def config_quantization(self) -> str | None:
        """``ModelConfig.quantization``: FP8 quantizes on load; a pre-quantized checkpoint's method
        comes from its own config.json, so the serve config leaves it unset (as configs/ do)."""
        return "fp8" if self.weights == "fp8" else None

    @property
    def kv_cache_dtype(self) -> str:
        return self.kv

    @property
    def precision_rank(self) -> tuple[int, int]:
        """Lower is more precise: weights first, then the KV cache."""
        return WEIGHT_FORMATS.index(self.weights), KV_DTYPES.index(self.kv)


def all_variants() -> list[Variant]:
    return [Variant(w, kv) for w in WEIGHT_FORMATS for kv in KV_DTYPES]


def variant_by_id(variant_id: str) -> Variant:
    for v in all_variants():
        if v.id == variant_id:
            return v
    raise ValueError(f"unknown variant {variant_id!r}; known: {', '.join(v.id for v in all_variants())}")


def unsupported_reason(variant: Variant, gpu: Gpu) -> str | None:
    """Why ``gpu`` cannot run ``variant`` the way the planner counts on, or None."""
    if variant.weights in FP8_WEIGHTS and not gpu.fp8_compute:
        return (
            f"{gpu.name} has no FP8 tensor cores: vLLM would run FP8 weights as weight-only W8A16 (Marlin), "
            "no faster than 16-bit; W8A8 int8 and int4 save the same memory with kernels this GPU has"
        )
    return None


def support_note(variant: Variant, gpu: Gpu) -> str | None:
    """What a kept variant needs or gives up on ``gpu``."""
    if variant.kv == "fp8" and not gpu.fp8_compute:
        return A100_FP8_KV_NOTE
    return None
