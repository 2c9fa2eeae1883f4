"""Quantize-on-load combinations are refused at config validation, with the reason."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from serve_app.config import ModelConfig
from serve_app.quantize.onload import QuantizationSetting, quantization_problem, vllm_quantization_name

GPU = {"num_gpus": 1}


def _model(**kw: Any) -> ModelConfig:
    return ModelConfig(id="m", **kw)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"quantization": "int8-weight-only", "dtype": "float32"}, "needs dtype bfloat16 or float16"),
        ({"quantization": "int8-weight-only", "dtype": "auto"}, "needs dtype bfloat16 or float16"),
        ({"quantization": "fp8", "dtype": "bfloat16"}, "needs a GPU"),
        ({"quantization": "fp8", "dtype": "float32", "ray_actor_options": GPU}, "computes in 16-bit"),
        ({"quantization": "bitsandbytes"}, "CUDA GPUs only"),
        ({"quantization": "awq", "dtype": "bfloat16"}, "needs a pre-quantized checkpoint"),
        ({"quantization": "gptq", "source": "/models/x-gptq", "dtype": "float32"}, "compute in 16-bit"),
        ({"quantization": "compressed-tensors", "source": "/models/x-w4a16", "dtype": "float32"}, "16-bit"),
        ({"quantization": "nf4"}, "unknown quantization 'nf4'"),
    ],
)
def test_impossible_combinations_fail_validation(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        _model(**fields)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"quantization": "int8-weight-only", "dtype": "bfloat16"},
        {"quantization": "fp8", "ray_actor_options": GPU},
        {"quantization": "bitsandbytes", "dtype": "bfloat16", "ray_actor_options": GPU},
        {"quantization": "awq", "source": "/models/x-awq", "dtype": "float16"},
        {"quantization": "compressed-tensors", "source": "/models/x-w4a16", "dtype": "bfloat16"},
    ],
)
def test_workable_combinations_validate(fields: dict[str, Any]) -> None:
    _model(**fields)


def test_pure_function_and_vllm_names() -> None:
    assert quantization_problem(QuantizationSetting(None, "float32", 0, "embedded:x")) is None
    assert vllm_quantization_name("int8-weight-only") == "int8_per_channel_weight_only"
    assert vllm_quantization_name("awq") == "awq"
