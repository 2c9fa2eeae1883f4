"""Offline quantization methods and the checks that run before any work (pure, stdlib only).

Each method maps to an llm-compressor recipe in :mod:`serve_app.quantize.pipeline`; this module
only says what each method is and refuses impossible settings early, e.g. a group size that does
not divide a layer's input width (SmolLM2-135M's 576 is not a multiple of 128), which would
otherwise surface as an error deep inside calibration after minutes of work.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from serve_app.errors import ServeAppError

# Group sizes that vLLM's W4A16 kernels (Marlin on CUDA, the WNA16 kernel on CPU) all accept.
KERNEL_GROUP_SIZES = (32, 64, 128)
CHANNELWISE = -1


class QuantizeSetupError(ServeAppError, ValueError):
    """Settings that cannot produce a servable checkpoint; raised before loading the model."""


@dataclass(frozen=True)
class QuantMethod:
    name: str
    scheme: str  # the compressed-tensors scheme the checkpoint ends up in
    weight_bits: int
    grouped: bool  # weights quantized per group of input channels (takes --group-size)
    symmetric: bool
    needs_calibration: bool
    summary: str


METHODS: dict[str, QuantMethod] = {
    m.name: m
    for m in (
        QuantMethod("awq", "W4A16_ASYM", 4, True, False, True, "AWQ activation-aware scales + int4 asymmetric groups"),
        QuantMethod("gptq", "W4A16", 4, True, True, True, "GPTQ error-compensated int4 symmetric groups"),
        QuantMethod("w8a8-int8", "W8A8", 8, False, True, True, "SmoothQuant + GPTQ int8 weights, dynamic int8 acts"),
        QuantMethod("fp8-dynamic", "FP8_DYNAMIC", 8, False, True, False, "fp8 per-channel weights, dynamic fp8 acts"),
    )
}


def get_method(name: str) -> QuantMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise QuantizeSetupError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}") from None


def linear_input_widths(hf_config: Mapping[str, Any]) -> dict[str, int]:
    """Input width of each quantized linear layer kind of a Llama/Mistral-style decoder.

    The attention output projection reads ``num_attention_heads * head_dim`` features, which
    differs from ``hidden_size`` in some models, so it is listed on its own.
    """
    try:
        hidden = int(hf_config["hidden_size"])
        heads = int(hf_config["num_attention_heads"])
        intermediate = int(hf_config["intermediate_size"])
    except KeyError as err:
        raise QuantizeSetupError(f"model config.json lacks {err.args[0]!r}; cannot check layer widths") from None
    head_dim = int(hf_config.get("head_dim") or hidden // heads)
    return {
        "self_attn.q_proj/k_proj/v_proj": hidden,
        "self_attn.o_proj": heads * head_dim,
        "mlp.gate_proj/up_proj": hidden,
        "mlp.down_proj": intermediate,
    }


def fitting_group_sizes(widths: Mapping[str, int]) -> list[int]:
    common = math.gcd(*widths.values())
    return [g for g in KERNEL_GROUP_SIZES if common % g == 0]


def check_group_size(method: QuantMethod, group_size: int, hf_config: Mapping[str, Any]) -> None:
    """Raise :class:`QuantizeSetupError` unless ``group_size`` suits every quantized layer."""
    if not method.grouped:
        return
    if group_size == CHANNELWISE:
        return
    if group_size <= 0:
        raise QuantizeSetupError(f"group size must be positive or {CHANNELWISE} (one group per channel)")
    widths = linear_input_widths(hf_config)
    bad = {name: width for name, width in widths.items() if width % group_size}
    if bad:
        listed = ", ".join(f"{name} ({width})" for name, width in bad.items())
        fits = fitting_group_sizes(widths)
        hint = f"group sizes that fit: {', '.join(map(str, fits))}, or " if fits else "use "
        raise QuantizeSetupError(
            f"group size {group_size} does not divide the input width of {listed}; "
            f"{hint}{CHANNELWISE} (one group per output channel)"
        )


def check_calibration_settings(method: QuantMethod, samples: int, seq_len: int, available: int) -> None:
    if not method.needs_calibration:
        return
    if samples < 1 or seq_len < 16:
        raise QuantizeSetupError("calibration needs --samples >= 1 and --seq-len >= 16")
    if available < samples:
        raise QuantizeSetupError(f"calibration file holds {available} samples, fewer than --samples {samples}")
