"""The goodput harness's checkpoint variants, FP8_DYNAMIC and W8A8 int8 (benchmarks/gpu: goodput.py,
make_8b_dummy.py, gate_lm_eval.py): each 8B-shaped folder carries the scheme `serve-app quantize`
writes, the gate evaluates SmolLM2's checkpoints on a shared GPU, and only a dummy checkpoint
folder has the deployment gate waived."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "gpu"))

import gate_lm_eval
import goodput
import goodput_variants
import make_8b_dummy

CHECKPOINT = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "goodput-gate-cpu" / "checkpoint"


@pytest.mark.parametrize(("flag", "checkpoint"), [("--fp8-dynamic", "smollm2-fp8-dynamic"), ("--w8a8", "smollm2-w8a8")])
def test_the_8b_folder_carries_the_scheme_of_the_gated_smollm2_checkpoint(
    tmp_path: Path, flag: str, checkpoint: str
) -> None:
    """The same scheme as the checkpoint `serve-app quantize` wrote for the gate (its config is
    committed), so the speed and the accuracy evidence are of one scheme."""
    source = tmp_path / "smollm2"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({"vocab_size": 49152, "bos_token_id": 1, "eos_token_id": 2}))
    make_8b_dummy.main(source, tmp_path / "out", flag)
    ours = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    written = json.loads((CHECKPOINT / f"{checkpoint}-quantization-config.json").read_text())
    theirs = written["quantization_config"]
    for key in ("quant_method", "format", "quantization_status", "ignore", "kv_cache_scheme"):
        assert ours[key] == theirs[key], key
    group, gated = ours["config_groups"]["group_0"], theirs["config_groups"]["group_0"]
    assert group["targets"] == gated["targets"] == ["Linear"] and group["format"] == gated["format"]
    for part in ("weights", "input_activations"):
        assert group[part] == {k: v for k, v in gated[part].items() if k in group[part]}, part
    assert group["weights"]["strategy"] == "channel" and group["input_activations"]["strategy"] == "token"


def test_the_gate_evaluates_the_checkpoint_against_smollm2_in_a_share_of_the_gpu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    commands: list[list[str]] = []
    monkeypatch.setattr(goodput_variants.compare, "prepare_models", lambda: None)

    def run(cmd: list[str], **_: object) -> object:
        commands.append(cmd)
        return type("Done", (), {"returncode": 0})()

    monkeypatch.setattr(goodput_variants.subprocess, "run", run)
    goodput_variants.gate(tmp_path / "out", ["fp8-dynamic", "w8a8"], tmp_path / "state")
    assert len(commands) == 2 and (tmp_path / "state" / "gate").is_dir()
    for variant, cmd in zip(("fp8-dynamic", "w8a8"), commands, strict=True):
        assert cmd[cmd.index("--model") + 1] == str(goodput_variants.GATE_MODELS[variant])
        assert cmd[cmd.index("--baseline") + 1] == goodput_variants.SMOLLM2
        assert cmd[-4:] == goodput_variants.GATE_GPU_MEMORY
        assert "--quantization" not in cmd  # the checkpoint's config.json names its method
        assert gate_lm_eval.CHECKPOINTS[variant] == goodput_variants.GATE_MODELS[variant]

    def pairs(flags: list[str]) -> dict[str, str]:
        return dict(zip(flags[::2], flags[1::2], strict=True))

    # the same share and KV cache as the lm-eval servers starting beside them
    assert pairs(goodput_variants.GATE_GPU_MEMORY) == pairs(gate_lm_eval.ENGINE_FLAGS[-4:])


def test_only_a_dummy_checkpoint_folder_has_the_deployment_gate_waived(tmp_path: Path) -> None:
    def stack_for(source: str) -> dict:
        model = {"id": "m", "source": source, "engine_options": {"max_num_seqs": 8}}
        planned = tmp_path / "planned.yaml"
        planned.write_text("# planned\n" + yaml.safe_dump({"applications": [{"args": {"models": [model]}}]}))
        goodput.write_stack_config(planned, tmp_path / "stack.yaml")
        text = (tmp_path / "stack.yaml").read_text()
        assert text.startswith("# planned\n# + engine_options.load_format: dummy")
        return yaml.safe_load(text)["applications"][0]["args"]["models"][0]

    for folder in goodput_variants.SHAPE_MODELS.values():
        quantized = stack_for(str(folder))
        assert quantized["allow_ungated"] is True and quantized["engine_options"]["load_format"] == "dummy"
    assert "allow_ungated" not in stack_for(str(goodput.compare.DUMMY))


def test_a_variant_new_to_the_profile_is_profiled_at_steady_rates_of_one_with_its_kernels() -> None:
    fp8 = [{"concurrency": 64, "output_tokens_per_s": 5000.0}]
    assert goodput_variants.rate_source_points({"fp8": fp8}, "fp8-dynamic") == fp8
    own = [{"concurrency": 64, "output_tokens_per_s": 4000.0}]
    assert goodput_variants.rate_source_points({"fp8": fp8, "fp8-dynamic": own}, "fp8-dynamic") == own
    assert goodput_variants.rate_source_points({"fp8": fp8}, "bf16") is None  # burst points then
