"""Quantize-on-load settings (``ModelConfig.quantization``): which combinations can work (pure).

Called from a ModelConfig validator, so it reads no files: it judges the config's own fields
only. Whether a checkpoint really is AWQ/GPTQ/compressed-tensors is vLLM's check at load.

Hardware notes the validator cannot see (it does not know the GPU model):
* ``fp8`` needs FP8 tensor cores (Hopper, Ada and later) for FP8 compute; on an A100 vLLM falls
  back to FP8 weight-only (Marlin W8A16): the memory saving stays, the compute speed-up does not.
* ``int8-weight-only`` maps to vLLM 0.32's ``int8_per_channel_weight_only``, which quantizes MoE
  expert weights only; dense models such as Llama/SmolLM2 load unchanged (measured: identical
  perplexity to plain bfloat16, see benchmarks/results/quantization/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.models.embedded import EMBEDDED_PREFIX

# Our names -> vLLM's ``quantization`` argument.
VLLM_NAMES = {
    "int8-weight-only": "int8_per_channel_weight_only",
    "fp8": "fp8",
    "bitsandbytes": "bitsandbytes",
    "awq": "awq",
    "gptq": "gptq",
    "compressed-tensors": "compressed-tensors",
}
# Methods that read scales from a pre-quantized checkpoint rather than quantizing at load.
CHECKPOINT_METHODS = frozenset({"awq", "gptq", "compressed-tensors"})
HALF_DTYPES = ("bfloat16", "float16")


@dataclass(frozen=True)
class QuantizationSetting:
    quantization: str | None
    dtype: str
    num_gpus: float
    source: str


def quantization_problem(s: QuantizationSetting) -> str | None:
    """The reason a setting cannot work, or None. One message per rule so users learn the rule."""
    q = s.quantization
    if q is None:
        return None
    if q not in VLLM_NAMES:
        return f"unknown quantization {q!r}; choose one of: {', '.join(VLLM_NAMES)}"
    on_gpu = s.num_gpus > 0
    if q == "int8-weight-only" and s.dtype not in HALF_DTYPES:
        return (
            "int8-weight-only (vLLM int8_per_channel_weight_only) needs dtype bfloat16 or float16, "
            f"not {s.dtype!r}; note that vLLM 0.32 applies it to MoE expert weights only"
        )
    if q == "fp8" and not on_gpu:
        return "fp8 quantize-on-load needs a GPU (set ray_actor_options.num_gpus); FP8 compute needs Hopper+"
    if q == "fp8" and s.dtype == "float32":
        return "fp8 computes in 16-bit; use dtype bfloat16, float16 or auto"
    if q == "bitsandbytes" and not on_gpu:
        return "bitsandbytes runs on CUDA GPUs only (set ray_actor_options.num_gpus)"
    if q in CHECKPOINT_METHODS and s.source.startswith(EMBEDDED_PREFIX):
        return f"{q} needs a pre-quantized checkpoint; {s.source} is unquantized (run `serve-app quantize`)"
    if q in CHECKPOINT_METHODS and s.dtype == "float32":
        # Measured: vLLM 0.32's CPU int4 kernel raises '"cpu_gemm_wna16" not implemented for Float';
        # its AWQ/GPTQ/Marlin GPU kernels accept only float16/bfloat16 activations.
        return f"vLLM's {q} kernels compute in 16-bit; use dtype bfloat16, float16 or auto"
    return None


def vllm_quantization_name(quantization: str) -> str:
    return VLLM_NAMES.get(quantization, quantization)
