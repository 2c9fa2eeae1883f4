"""Capacity planner against numbers computed by hand from the models' published shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serve_app.commands import plan as plan_command
from serve_app.models.shapes import PRESETS, UnknownModelError, preset, shape_from_hf_config
from serve_app.quantize.planner import (
    FIXED_OVERHEAD_BYTES,
    GIB,
    GPUS,
    PlanRequest,
    kv_bytes_per_token,
    plan,
    plan_with_smallest_tp,
    tp_is_valid,
    weight_bytes,
)

KIB = 1024


def test_llama2_7b_fp16_weights_are_about_13_5_gb() -> None:
    shape = preset("llama-2-7b")
    assert shape.total_params == 6_738_415_616  # the published parameter count
    assert weight_bytes(shape, None, "float16") == 6_738_415_616 * 2
    assert 13.4e9 < weight_bytes(shape, None, "float16") < 13.55e9


def test_published_parameter_counts() -> None:
    assert preset("llama-3-8b").total_params == 8_030_261_248
    assert preset("smollm2-135m").total_params == 134_515_008
    assert preset("mistral-7b").total_params == 7_241_732_096


def test_kv_bytes_per_token_by_hand() -> None:
    # 2 (K,V) x 32 layers x 32 heads x 128 dims x 2 bytes
    assert kv_bytes_per_token(preset("llama-2-7b"), "auto", "float16") == 512 * KIB
    # GQA: 8 KV heads -> a quarter of that
    assert kv_bytes_per_token(preset("llama-3-8b"), "auto", "bfloat16") == 128 * KIB
    assert kv_bytes_per_token(preset("llama-3-8b"), "fp8", "bfloat16") == 64 * KIB
    # 2 x 30 x 3 x 64 x 2
    assert kv_bytes_per_token(preset("smollm2-135m"), "auto", "bfloat16") == 23_040


def test_kv_heads_split_then_replicated_across_tp() -> None:
    shape = preset("llama-3-8b")  # 8 KV heads
    assert kv_bytes_per_token(shape, "auto", "bfloat16", tp=2) == 64 * KIB
    assert kv_bytes_per_token(shape, "auto", "bfloat16", tp=8) == 16 * KIB
    assert kv_bytes_per_token(shape, "auto", "bfloat16", tp=16) == 16 * KIB  # one replicated head per rank


def test_kv_budget_and_concurrency_by_hand() -> None:
    req = PlanRequest(shape=preset("llama-2-7b"), gpu=GPUS["a100-80gb"], max_model_len=4096, dtype="float16")
    result = plan(req)
    usable = int(80 * GIB * 0.9)
    # activations: 8192 tokens x (4*4096 + (4096 + 2*4096) + 2*11008) x 2 bytes; logits: 256 x 32000 x 4
    reserve = FIXED_OVERHEAD_BYTES + 8192 * (16_384 + 12_288 + 22_016) * 2 + 256 * 32_000 * 4
    budget = usable - 13_476_831_232 - reserve
    assert result.reserve_bytes_per_gpu == reserve
    assert result.kv_budget_bytes_per_gpu == budget
    assert result.kv_cache_tokens == budget // (512 * KIB) == 117_032
    assert result.max_concurrent_sequences == 117_032 // 4096 == 28
    assert result.fits


def test_fp8_kv_cache_doubles_the_tokens() -> None:
    base = PlanRequest(shape=preset("llama-3-8b"), gpu=GPUS["h100-80gb"], max_model_len=8192)
    auto = plan(base)
    fp8 = plan(PlanRequest(**{**base.__dict__, "kv_cache_dtype": "fp8"}))
    assert fp8.kv_bytes_per_token * 2 == auto.kv_bytes_per_token
    assert fp8.kv_cache_tokens in (2 * auto.kv_cache_tokens, 2 * auto.kv_cache_tokens + 1)


def test_int4_awq_weights_by_hand() -> None:
    shape = preset("llama-2-7b")
    linear = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    rest = (2 * 32_000 * 4096 + 65 * 4096) * 2  # embeddings + LM head + norms stay 16-bit
    # 4 bits + a 16-bit scale and a 4-bit zero point per 128 weights
    assert weight_bytes(shape, "awq", "float16", 128) == rest + -(-linear * (4 + 20 / 128) // 8)
    assert weight_bytes(shape, "gptq", "float16", 128) < weight_bytes(shape, "awq", "float16", 128)
    assert weight_bytes(shape, "awq", "float16", 64) > weight_bytes(shape, "awq", "float16", 128)


def test_int8_weight_only_leaves_dense_models_unchanged_and_says_so() -> None:
    req = PlanRequest(
        shape=preset("llama-3-8b"), gpu=GPUS["h100-80gb"], max_model_len=2048, quantization="int8-weight-only"
    )
    result = plan(req)
    assert result.weight_bytes_total == weight_bytes(preset("llama-3-8b"), None, "bfloat16")
    assert any("MoE" in n for n in result.notes)


def test_fp8_on_a100_is_noted_as_weight_only() -> None:
    req = PlanRequest(shape=preset("llama-3-8b"), gpu=GPUS["a100-80gb"], max_model_len=2048, quantization="fp8")
    assert any("weight-only" in n for n in plan(req).notes)
    hopper = PlanRequest(shape=preset("llama-3-8b"), gpu=GPUS["h100-80gb"], max_model_len=2048, quantization="fp8")
    assert not any("weight-only" in n for n in plan(hopper).notes)


def test_smallest_tp_that_fits() -> None:
    req = PlanRequest(shape=preset("llama-3-70b"), gpu=GPUS["h100-80gb"], max_model_len=8192)
    result = plan_with_smallest_tp(req)
    assert not result.fits and result.max_concurrent_sequences == 0
    assert result.smallest_fitting_tp == 2
    small = plan_with_smallest_tp(PlanRequest(shape=preset("llama-2-7b"), gpu=GPUS["a100-40gb"], max_model_len=4096))
    assert small.smallest_fitting_tp == 1


def test_nothing_fits_reports_none() -> None:
    req = PlanRequest(
        shape=preset("llama-2-70b"),
        gpu=GPUS["a100-40gb"],
        max_model_len=4096,
        dtype="float32",
        gpu_memory_utilization=0.5,
    )
    assert plan_with_smallest_tp(req).smallest_fitting_tp is None


def test_tp_must_divide_heads() -> None:
    shape = preset("smollm2-135m")  # 9 heads, 3 KV heads
    assert tp_is_valid(shape, 1) and tp_is_valid(shape, 3)
    assert not tp_is_valid(shape, 2)
    result = plan(PlanRequest(shape=shape, gpu=GPUS["h200"], max_model_len=2048, tensor_parallel_size=2))
    assert not result.fits and not result.tp_valid


def test_shape_from_hf_config_matches_the_preset() -> None:
    config = {
        "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "head_dim": 64, "intermediate_size": 1536, "vocab_size": 49152, "tie_word_embeddings": True,
        "max_position_embeddings": 8192,
    }  # fmt: skip
    assert shape_from_hf_config("smollm2-135m", config) == PRESETS["smollm2-135m"]
    with pytest.raises(UnknownModelError):
        shape_from_hf_config("broken", {"hidden_size": 8})


def test_plan_command_json_for_a_preset(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--model", "llama-2-7b", "--gpu", "a100-80gb", "--max-model-len", "4096", "--dtype", "float16", "--json"]
    parser = _parser()
    code = plan_command.run(parser.parse_args(["plan", *args]))
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["kv_bytes_per_token"] == 512 * KIB and out["max_concurrent_sequences"] == 28


def test_plan_command_reads_a_checkpoint_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = {
        "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "intermediate_size": 1536, "vocab_size": 49152, "tie_word_embeddings": True,
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    code = plan_command.run(
        _parser().parse_args(["plan", "--model", str(tmp_path), "--gpu", "h200", "--max-model-len", "2048"])
    )
    assert code == 0
    assert "KV per token" in capsys.readouterr().out


def test_plan_command_rejects_unknown_models(capsys: pytest.CaptureFixture[str]) -> None:
    code = plan_command.run(
        _parser().parse_args(["plan", "--model", "gpt-9", "--gpu", "h200", "--max-model-len", "16"])
    )
    assert code == 2
    assert "neither a preset" in capsys.readouterr().err


def _parser():
    import argparse

    parser = argparse.ArgumentParser()
    plan_command.register(parser.add_subparsers())
    return parser


def test_plan_command_takes_defaults_from_a_serve_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text(
        "applications:\n"
        "  - name: a\n"
        "    import_path: serve_app.app:build_app\n"
        "    args:\n"
        "      models:\n"
        "        - id: big\n"
        "          source: /models/llama3\n"
        "          shape_preset: llama-3-8b\n"
        "          kv_cache_dtype: fp8\n"
        "          max_model_len: 8192\n"
        "          tensor_parallel_size: 2\n"
    )
    code = plan_command.run(_parser().parse_args(["plan", "--model", str(config), "--gpu", "h100-80gb", "--json"]))
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["tensor_parallel_size"] == 2 and out["max_model_len"] == 8192
    assert out["kv_bytes_per_token"] == 64 * KIB and out["kv_bytes_per_token_per_gpu"] == 32 * KIB


def test_scheduler_cap_is_noted() -> None:
    result = plan(PlanRequest(shape=preset("smollm2-135m"), gpu=GPUS["h200"], max_model_len=2048))
    assert result.max_concurrent_sequences > 256
    assert any("max_num_seqs=256" in n for n in result.notes)
