"""Deployment gate: quantized checkpoints need a passing evaluation made for the same weights."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from serve_app.config import AppConfig, ModelConfig, load_config
from serve_app.quantize.gate import GateError, check_deployable, is_quantized_checkpoint, refusal_reason
from serve_app.quantize.report import EVAL_REPORT, QUANT_REPORT, checkpoint_fingerprint
from serve_app.validate import validate_app


@dataclass(frozen=True)
class Model:
    id: str = "m"
    allow_ungated: bool = False


def _checkpoint(folder: Path, quantized: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config: dict = {"model_type": "llama"}
    if quantized:
        config["quantization_config"] = {"quant_method": "compressed-tensors"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    return folder


def _evaluation(folder: Path, passed: bool, fingerprint: str | None = None, failures: list[str] | None = None) -> None:
    report = {
        "passed": passed,
        "failures": failures or [],
        "checkpoint_fingerprint": fingerprint or checkpoint_fingerprint(folder),
    }
    (folder / EVAL_REPORT).write_text(json.dumps(report))


def test_unquantized_checkpoints_pass_without_reports(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path / "plain", quantized=False)
    assert not is_quantized_checkpoint(folder)
    check_deployable(Model(), folder)


def test_missing_paths_are_not_gated(tmp_path: Path) -> None:
    check_deployable(Model(), tmp_path / "absent")


def test_quantized_without_evaluation_is_refused(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path / "q")
    with pytest.raises(GateError, match=r"no evaluation_report\.json.*serve-app evaluate.*allow_ungated"):
        check_deployable(Model(id="small-awq"), folder)


def test_a_quantization_report_alone_marks_a_folder_quantized(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path / "q", quantized=False)
    (folder / QUANT_REPORT).write_text("{}")
    assert is_quantized_checkpoint(folder)
    with pytest.raises(GateError):
        check_deployable(Model(), folder)


def test_failed_evaluation_is_refused_with_its_reasons(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path / "q")
    _evaluation(folder, passed=False, failures=["perplexity rose 31.00%"])
    with pytest.raises(GateError, match=r"evaluation failed.*perplexity rose 31\.00%"):
        check_deployable(Model(), folder)


def test_passing_evaluation_allows_deployment(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path / "q")
    _evaluation(folder, passed=True)
    assert refusal_reason(folder) is None
    check_deployable(Model(), folder)


def test_evaluation_of_other_weights_is_stale(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path / "q")
    _evaluation(folder, passed=True)
    (folder / "model.safetensors").write_bytes(b"\0" * 65)  # re-quantized in place
    with pytest.raises(GateError, match="different checkpoint"):
        check_deployable(Model(), folder)


def test_allow_ungated_skips_the_gate(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path / "q")
    check_deployable(Model(allow_ungated=True), folder)


def test_unreadable_report_is_a_gate_error(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path / "q")
    (folder / EVAL_REPORT).write_text("{not json")
    with pytest.raises(GateError, match="unreadable"):
        check_deployable(Model(), folder)


def test_model_config_carries_allow_ungated(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path / "q")
    strict = ModelConfig(id="q", source=str(folder))
    assert strict.allow_ungated is False
    with pytest.raises(GateError):
        check_deployable(strict, folder)
    check_deployable(ModelConfig(id="q", source=str(folder), allow_ungated=True), folder)


def _app_config(folder: Path, allow_ungated: bool) -> AppConfig:
    model = {"id": "q", "source": str(folder), "dtype": "bfloat16", "allow_ungated": allow_ungated}
    return load_config({"models": [model]})


def test_the_app_refuses_a_failed_checkpoint_before_deploying(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path / "q")
    _evaluation(folder, passed=False, failures=["golden answers kept 89% < 90%"])
    with pytest.raises(GateError, match=r"model 'q'.*evaluation failed.*golden answers kept 89%"):
        validate_app(_app_config(folder, allow_ungated=False))


def test_the_app_admits_allow_ungated(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path / "q")
    _evaluation(folder, passed=False)
    assert validate_app(_app_config(folder, allow_ungated=True)).models[0].allow_ungated


def test_the_replica_checks_the_gate_where_it_loads_the_weights(tmp_path: Path) -> None:
    from serve_app.replica.engine_start import resolve_model_path

    folder = _checkpoint(tmp_path / "q")
    with pytest.raises(GateError, match=r"no evaluation_report\.json"):
        resolve_model_path(ModelConfig(id="q", source=str(folder)), None)
    assert resolve_model_path(ModelConfig(id="q", source=str(folder), allow_ungated=True), None) == folder
