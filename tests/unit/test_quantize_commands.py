"""Command wiring: `quantize` fails before any work; `evaluate` writes the report the gate reads.

The vLLM measurement is replaced by fixed numbers here (the real worker runs vLLM and is exercised
by the recorded runs in benchmarks/results/quantization); what is tested is the plumbing around it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from serve_app.commands import evaluate as evaluate_command
from serve_app.commands import quantize as quantize_command
from serve_app.quantize import runner
from serve_app.quantize.evaluate import ModelMeasurement
from serve_app.quantize.gate import GateError, check_deployable
from serve_app.quantize.report import EVAL_REPORT

SMOLLM2 = {"hidden_size": 576, "num_attention_heads": 9, "head_dim": 64, "intermediate_size": 1536}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    quantize_command.register(sub)
    evaluate_command.register(sub)
    return parser


def _checkpoint(folder: Path) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(SMOLLM2 | {"quantization_config": {"format": "pack-quantized"}}))
    (folder / "model.safetensors").write_bytes(b"\0" * 32)
    return folder


def test_quantize_refuses_a_bad_group_size_before_starting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(SMOLLM2))
    argv = ["quantize", "--model", str(model), "--method", "awq", "--group-size", "128", "--out", str(tmp_path / "o")]
    code = quantize_command.run(_parser().parse_args([*argv, "--quant-python", sys.executable]))
    assert code == 2
    assert "does not divide" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _measurement(model: str, ppl: float, correct: int) -> ModelMeasurement:
    golden = [{"question": f"q{i}", "answer": "a", "reply": "", "correct": i < correct} for i in range(10)]
    return ModelMeasurement(model, "bfloat16", None, 100, 1.0, 1000, -1000.0, ppl, 10.0, golden, 64, 50.0)


@pytest.mark.parametrize(("ppl", "correct", "code"), [(20.5, 10, 0), (30.0, 10, 1), (20.0, 5, 1)])
def test_evaluate_writes_the_report_the_gate_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ppl: float, correct: int, code: int
) -> None:
    candidate, baseline = _checkpoint(tmp_path / "q"), tmp_path / "base"
    baseline.mkdir()
    fake = {str(candidate): _measurement("q", ppl, correct), str(baseline): _measurement("b", 20.0, 10)}
    monkeypatch.setattr(runner, "measure_model", lambda model, *_a, **_k: fake[str(model)])
    args = _parser().parse_args(["evaluate", "--model", str(candidate), "--baseline", str(baseline)])
    assert evaluate_command.run(args) == code
    report = json.loads((candidate / EVAL_REPORT).read_text())
    assert report["passed"] is (code == 0)
    model = type("M", (), {"id": "q", "allow_ungated": False})()
    if code == 0:
        check_deployable(model, candidate)
    else:
        with pytest.raises(GateError, match="evaluation failed"):
            check_deployable(model, candidate)


def test_evaluate_of_on_load_quantization_needs_an_explicit_report(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    args = _parser().parse_args(["evaluate", "--model", str(folder), "--quantization", "int8-weight-only"])
    assert evaluate_command.run(args) == 2


def test_evaluate_of_an_fp8_kv_cache_measures_the_candidate_only_and_needs_an_explicit_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    candidate, baseline = _checkpoint(tmp_path / "q"), tmp_path / "base"
    baseline.mkdir()
    calls: dict[str, str] = {}

    def measure(model: Path, *args: object, **_: object) -> ModelMeasurement:
        calls[str(model)] = str(args[5]) if len(args) > 5 else "auto"  # (dtype, ..., quantization, kv)
        return _measurement(str(model), 20.0, 10)

    monkeypatch.setattr(runner, "measure_model", measure)
    argv = ["evaluate", "--model", str(candidate), "--baseline", str(baseline), "--kv-cache-dtype", "fp8"]
    assert evaluate_command.run(_parser().parse_args(argv)) == 2  # no report next to the checkpoint
    assert not (candidate / EVAL_REPORT).exists()
    report = tmp_path / "fp8kv.json"
    assert evaluate_command.run(_parser().parse_args([*argv, "--report", str(report)])) == 0
    assert calls == {str(baseline): "auto", str(candidate): "fp8"}


def test_the_worker_command_line_carries_the_kv_cache_dtype(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_run(cmd: list[str], **_: object) -> object:
        seen.append(cmd)
        out = Path(cmd[cmd.index("--out") + 1])
        out.write_text(json.dumps(_measurement("m", 20.0, 10).to_dict() | {"kv_cache_dtype": "fp8"}))
        return type("Done", (), {"returncode": 0})()

    monkeypatch.setattr(runner.subprocess, "run", fake_run)
    got = runner.measure_model(tmp_path, "bfloat16", tmp_path, tmp_path, 1024, "fp8", "fp8")
    assert seen[0][seen[0].index("--kv-cache-dtype") + 1] == "fp8"
    assert got.kv_cache_dtype == "fp8"
    runner.measure_model(tmp_path, "bfloat16", tmp_path, tmp_path, 1024)
    assert "--kv-cache-dtype" not in seen[1]


def test_gpu_memory_settings_reach_both_workers_and_bad_ones_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU other engines share, each measured model takes the share and the fixed KV cache
    given, not vLLM's 0.9 and a cache sized from a memory profile the other engines disturb."""
    seen: list[list[str]] = []

    def fake_run(cmd: list[str], **_: object) -> object:
        seen.append(cmd)
        model = cmd[cmd.index("--model") + 1]
        Path(cmd[cmd.index("--out") + 1]).write_text(json.dumps(_measurement(model, 20.0, 10).to_dict()))
        return type("Done", (), {"returncode": 0})()

    monkeypatch.setattr(runner.subprocess, "run", fake_run)
    candidate, baseline = _checkpoint(tmp_path / "q"), tmp_path / "base"
    baseline.mkdir()
    argv = ["evaluate", "--model", str(candidate), "--baseline", str(baseline), "--report", str(tmp_path / "r.json")]
    shared = [*argv, "--gpu-memory-utilization", "0.2", "--kv-cache-memory-bytes", "2147483648"]
    assert evaluate_command.run(_parser().parse_args(shared)) == 0
    for cmd in seen:
        assert cmd[cmd.index("--gpu-memory-utilization") + 1] == "0.2"
        assert cmd[cmd.index("--kv-cache-memory-bytes") + 1] == "2147483648"
    assert len(seen) == 2
    assert evaluate_command.run(_parser().parse_args(argv)) == 0
    assert all("--gpu-memory-utilization" not in cmd and "--kv-cache-memory-bytes" not in cmd for cmd in seen[2:])
    seen.clear()
    for bad in (["--gpu-memory-utilization", "1.5"], ["--kv-cache-memory-bytes", "0"]):
        assert evaluate_command.run(_parser().parse_args([*argv, *bad])) == 2
    assert seen == []
