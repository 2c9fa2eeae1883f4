"""LoRA on quantized bases per device: the schemes a config makes, and only measured failures refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serve_app.config import ConfigError, load_config
from serve_app.quantize import lora_support
from serve_app.quantize.lora_support import SCHEMES, base_schemes, checkpoint_schemes, lora_quantization_problem
from serve_app.validate import check_adapters
from tests.unit.lora_files import write_base

INT8 = {"num_bits": 8, "type": "int"}
W8A8 = {"weights": INT8, "input_activations": INT8}
W4A16 = {"weights": {"num_bits": 4, "type": "int", "symmetric": True}, "input_activations": None}
W4A16_ASYM = {"weights": {"num_bits": 4, "type": "int", "symmetric": False}}
FP8_WEIGHTS = {"weights": {"num_bits": 8, "type": "float"}, "input_activations": {"num_bits": 8, "type": "float"}}


@pytest.mark.parametrize(
    ("config", "schemes"),
    [
        ({"config_groups": {"g": W8A8}}, ["w8a8-int8"]),
        ({"config_groups": {"g": W4A16}}, ["w4a16"]),
        ({"config_groups": {"g": W4A16_ASYM}}, ["w4a16-asym"]),
        ({"config_groups": {"g": FP8_WEIGHTS}}, ["fp8"]),
        ({"config_groups": {"a": W4A16, "b": W4A16}}, ["w4a16"]),
        ({"quant_method": "awq", "zero_point": True}, ["w4a16-asym"]),
        ({"quant_method": "gptq", "bits": 4, "sym": True}, ["w4a16"]),
        ({"quant_method": "fp8"}, ["fp8"]),
        ({"quant_method": "bitsandbytes"}, []),
        ({"config_groups": "not a mapping"}, []),
    ],
)
def test_a_checkpoints_schemes(config: dict, schemes: list[str]) -> None:
    assert checkpoint_schemes(config) == schemes


def test_quantize_on_load_and_the_kv_cache_add_their_schemes() -> None:
    assert base_schemes(None, None, "auto") == []
    assert base_schemes(None, "fp8", "fp8_e4m3") == ["fp8", "fp8-kv"]
    assert base_schemes({"config_groups": {"g": W4A16}}, "compressed-tensors", "fp8") == ["w4a16", "fp8-kv"]


def test_only_measured_failures_are_refused_and_every_entry_is_a_known_scheme() -> None:
    assert all(device in ("cpu", "gpu") and scheme in SCHEMES for device, scheme in lora_support.LORA_ON_QUANTIZED)
    problem = lora_quantization_problem(["w4a16", "w8a8-int8"], "cpu")
    assert problem is not None and problem.startswith("LoRA cannot run on an int8 W8A8 checkpoint on CPU: ")
    assert lora_quantization_problem(["w4a16", "w4a16-asym"], "cpu") is None
    assert lora_quantization_problem(["w8a8-int8", "fp8", "fp8-kv"], "gpu") is None  # measured to serve on a GPU


def test_a_gpu_failure_filled_in_the_table_is_refused_on_gpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    table = dict(lora_support.LORA_ON_QUANTIZED) | {("gpu", "fp8-kv"): "measured: the engine fails to start"}
    monkeypatch.setattr(lora_support, "LORA_ON_QUANTIZED", table)
    assert lora_quantization_problem(["fp8", "fp8-kv"], "gpu") == (
        "LoRA cannot run on an FP8 KV cache on GPU: measured: the engine fails to start"
    )
    assert lora_quantization_problem(["fp8-kv"], "cpu") is None


def test_quantize_on_load_and_kv_cache_reach_the_config_check(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    table = dict(lora_support.LORA_ON_QUANTIZED) | {("gpu", "fp8"): "measured: no"}
    monkeypatch.setattr(lora_support, "LORA_ON_QUANTIZED", table)
    model = {"id": "m", "source": str(write_base(tmp_path / "b")), "lora": {"max_lora_rank": 8}, "dtype": "bfloat16"}
    model |= {"quantization": "fp8", "ray_actor_options": {"num_gpus": 1}}
    with pytest.raises(ConfigError, match=r"models\[0\].lora: LoRA cannot run on FP8 weights on GPU: measured: no$"):
        check_adapters(load_config({"models": [model]}))
    check_adapters(load_config({"models": [model | {"quantization": None, "kv_cache_dtype": "fp8"}]}))


# The --device gpu run's base names, as the table's schemes.
GPU_RUN_SCHEMES = {"fp8": ["fp8"], "fp8-fp8kv": ["fp8", "fp8-kv"], "w8a8-int8": ["w8a8-int8"]}


def test_the_gpu_rows_are_what_the_committed_gpu_run_measured() -> None:
    run = json.loads(
        (Path(__file__).resolve().parents[2] / "benchmarks/results/lora/quantized-base-gpu.json").read_text()
    )
    assert run["device"] == "gpu"
    for base, schemes in GPU_RUN_SCHEMES.items():
        answers = run["bases"][base]["answers"]
        base_answers = answers["smollm2-135m-instruct"]
        for adapter in ("pirate", "robot"):
            assert all(answers[adapter][p] != base_answers[p] for p in run["prompts"]), (base, adapter)
        for scheme in schemes:
            assert ("gpu", scheme) in lora_support.LORA_ON_QUANTIZED, scheme
            assert lora_support.LORA_ON_QUANTIZED[("gpu", scheme)] is None, scheme
    measured_gpu = {s for schemes in GPU_RUN_SCHEMES.values() for s in schemes}
    assert {s for d, s in lora_support.LORA_ON_QUANTIZED if d == "gpu"} == measured_gpu
