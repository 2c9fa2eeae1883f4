"""The LoRA benchmarks' pure parts: the GPU engine flags, the run budget, the app configs they serve."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from benchmarks import lora_adapters, lora_quantized_base
from benchmarks.lora_quantized_base import BASES, engine_command
from serve_app.config import load_config
from serve_app.validate import check_adapters


def test_gpu_bases_add_fp8_and_keep_the_cpu_checkpoints() -> None:
    assert list(BASES["gpu"]) == ["unquantized", "fp8", "fp8-fp8kv", "w8a8-int8", "w4a16", "w4a16-asym"]
    assert set(BASES["cpu"]) == {"unquantized", "w8a8-int8", "w4a16", "w4a16-asym"}
    assert BASES["gpu"]["fp8-fp8kv"].flags == ("--quantization", "fp8", "--kv-cache-dtype", "fp8")


def test_the_engine_command_serves_both_adapters_and_caps_gpu_memory() -> None:
    adapters = {"pirate": Path("/a/pirate"), "robot": Path("/a/robot")}
    gpu = engine_command(Path("/m"), 8123, BASES["gpu"]["fp8"], adapters, "gpu")
    modules = gpu.index("--lora-modules")
    assert gpu[modules : modules + 3] == ["--lora-modules", "pirate=/a/pirate", "robot=/a/robot"]
    for flag, value in (("--max-lora-rank", "8"), ("--quantization", "fp8"), ("--gpu-memory-utilization", "0.3")):
        assert gpu[gpu.index(flag) + 1] == value
    assert "--enforce-eager" in gpu and "--enable-lora" in gpu
    cpu = engine_command(Path("/m"), 8123, BASES["cpu"]["w4a16"], adapters, "cpu")
    assert "--gpu-memory-utilization" not in cpu and "--quantization" not in cpu


def run_args(base: list[str] | None, budget_s: float) -> argparse.Namespace:
    return argparse.Namespace(device="gpu", base=base, budget_s=budget_s, start_timeout_s=30.0, cache_dir=None)


def test_bases_the_budget_cannot_fit_are_skipped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ran: list[str] = []
    monkeypatch.setattr(lora_quantized_base, "prepare_model", lambda cache_dir: tmp_path)

    def run_base(name: str, *_: Any) -> dict[str, Any]:
        ran.append(name)
        return {"answers": {}}

    monkeypatch.setattr(lora_quantized_base, "run_base", run_base)
    args = run_args(None, 100.0)
    results = lora_quantized_base.run_all(args)
    assert ran == list(BASES["gpu"]) and all("skipped" not in r for r in results.values())
    results = lora_quantized_base.run_all(run_args(["fp8"], 95.0))
    assert ran[-1] == "fp8"
    results = lora_quantized_base.run_all(run_args(["fp8"], 50.0))
    assert results["fp8"]["skipped"].endswith("s of budget left") and ran.count("fp8") == 2


def test_the_summary_counts_changed_and_equal_answers() -> None:
    prompts = lora_quantized_base.PROMPTS
    same = {p: "x" for p in prompts}
    base = {lora_quantized_base.MODEL_ID: same, "pirate": {p: "Arr" for p in prompts}, "robot": same}
    summary = lora_quantized_base.compare({"unquantized": {"answers": base}, "fp8": {"answers": base}, "x": {}})
    assert summary["fp8"]["pirate_differs_from_base"] == 3 and summary["fp8"]["robot_differs_from_base"] == 0
    assert summary["fp8"]["equal_to_unquantized"]["pirate"] == 3 and "x" not in summary


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_the_adapter_benchmarks_apps_are_valid_configs(device: str, tmp_path: Path) -> None:
    args = argparse.Namespace(device=device, max_loras=4, cache_dir=tmp_path)
    for lora in (False, True):
        config = load_config(lora_adapters.app_config(lora, args))
        check_adapters(config)
        model = config.models[0]
        assert (model.replica_gpus > 0) == (device == "gpu") and config.model_cache_dir == str(tmp_path)
        assert model.enforce_eager and (model.lora is not None) == lora


def test_percentiles_pick_a_measured_value() -> None:
    values = [float(i) for i in range(100)]
    assert lora_adapters.percentile(values, 0.5) == 50.0
    assert lora_adapters.percentile(values, 0.99) == 99.0
    assert lora_adapters.percentile([1.0], 0.99) == 1.0
