"""Checks that run before any quantization work: methods, group sizes, calibration settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serve_app.quantize import methods, runner
from serve_app.quantize.methods import QuantizeSetupError, check_group_size, get_method, linear_input_widths

SMOLLM2 = {"hidden_size": 576, "num_attention_heads": 9, "head_dim": 64, "intermediate_size": 1536}
LLAMA_7B = {"hidden_size": 4096, "num_attention_heads": 32, "intermediate_size": 11008}


def test_group_128_does_not_divide_smollm2s_576() -> None:
    with pytest.raises(QuantizeSetupError) as err:
        check_group_size(get_method("awq"), 128, SMOLLM2)
    message = str(err.value)
    assert "576" in message and "q_proj" in message
    assert "down_proj" not in message  # 1536 = 12 x 128 is fine
    assert "32, 64" in message


@pytest.mark.parametrize("group", [32, 64, -1])
def test_fitting_group_sizes_pass(group: int) -> None:
    check_group_size(get_method("gptq"), group, SMOLLM2)


def test_llama_takes_128_but_not_512() -> None:
    check_group_size(get_method("awq"), 128, LLAMA_7B)
    with pytest.raises(QuantizeSetupError, match=r"mlp.down_proj \(11008\)"):
        check_group_size(get_method("awq"), 512, LLAMA_7B)


def test_non_positive_group_sizes_are_refused() -> None:
    with pytest.raises(QuantizeSetupError, match="positive"):
        check_group_size(get_method("awq"), 0, SMOLLM2)


def test_per_channel_methods_ignore_group_size() -> None:
    check_group_size(get_method("w8a8-int8"), 128, SMOLLM2)
    check_group_size(get_method("fp8-dynamic"), 7, SMOLLM2)


def test_o_proj_width_uses_heads_times_head_dim() -> None:
    widths = linear_input_widths(
        {"hidden_size": 4096, "num_attention_heads": 40, "head_dim": 128, "intermediate_size": 8}
    )
    assert widths["self_attn.o_proj"] == 5120


def test_incomplete_config_and_unknown_method() -> None:
    with pytest.raises(QuantizeSetupError, match="intermediate_size"):
        linear_input_widths({"hidden_size": 8, "num_attention_heads": 2})
    with pytest.raises(QuantizeSetupError, match="awq, gptq"):
        get_method("nf4")


def test_calibration_settings() -> None:
    awq = get_method("awq")
    methods.check_calibration_settings(awq, 128, 512, 128)
    with pytest.raises(QuantizeSetupError, match="fewer than --samples 200"):
        methods.check_calibration_settings(awq, 200, 512, 128)
    methods.check_calibration_settings(get_method("fp8-dynamic"), 200, 512, 0)  # no calibration needed


def test_runner_picks_the_largest_fitting_group_size() -> None:
    awq = get_method("awq")
    assert runner.choose_group_size(awq, None, SMOLLM2) == 64
    assert runner.choose_group_size(awq, None, LLAMA_7B) == 128
    assert runner.choose_group_size(get_method("fp8-dynamic"), None, SMOLLM2) == methods.CHANNELWISE
    with pytest.raises(QuantizeSetupError):
        runner.choose_group_size(awq, 128, SMOLLM2)


def test_runner_precheck_fails_fast(tmp_path: Path) -> None:
    with pytest.raises(QuantizeSetupError, match=r"no config\.json"):
        runner.precheck(tmp_path, "awq", None, tmp_path / "c.jsonl", 8, 64)
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2))
    with pytest.raises(QuantizeSetupError, match="does not exist"):
        runner.precheck(tmp_path, "awq", 64, tmp_path / "missing.jsonl", 8, 64)


def test_missing_quant_env_names_the_setup_command(tmp_path: Path) -> None:
    with pytest.raises(runner.RunnerError, match="make quant-env"):
        runner.quant_python(tmp_path / "nope" / "python")
