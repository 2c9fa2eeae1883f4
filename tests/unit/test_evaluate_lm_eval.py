"""`serve-app evaluate --lm-eval`: its flags, the report's lm_eval section and what the planner's gate
makes of it, and the plumbing around vLLM's server (a stand-in server here; the real one runs in
tests/integration/test_evaluate_lm_eval.py)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import psutil
import pytest

from serve_app.commands import evaluate as evaluate_command
from serve_app.engine.vllm_compat import SERVER_MAINS, openai_server_module
from serve_app.quantize import lm_eval_runner, runner
from serve_app.quantize.evaluate import Thresholds, compare, with_lm_eval
from serve_app.quantize.gate_reports import read_gate_reports
from serve_app.quantize.lm_eval_runner import ServedModel
from tests.unit.test_quantize_commands import _checkpoint, _measurement, _parser

QA, MC = "serve_app_facts_qa", "serve_app_facts_mc"
BASE_SCORES = {MC: {"acc": 0.65, "acc_norm": 0.6}, QA: {"contains": 0.76}}
DROPPED = {MC: {"acc": 0.65, "acc_norm": 0.6}, QA: {"contains": 0.64}}
QA_FAILURE = f"lm-eval: {QA}/contains -0.120 against the baseline (max drop 0.05)"


def test_lm_eval_is_off_by_default_and_its_flags_parse() -> None:
    args = _parser().parse_args(["evaluate", "--model", "m"])
    assert (args.lm_eval, args.max_lm_eval_drop, args.lm_eval_limit, args.lm_eval_python) == (False, 0.05, None, None)
    argv = ["evaluate", "--model", "m", "--lm-eval", "--max-lm-eval-drop", "0.1", "--lm-eval-limit", "10"]
    args = _parser().parse_args([*argv, "--lm-eval-python", "/opt/py"])
    assert (args.lm_eval, args.max_lm_eval_drop, args.lm_eval_limit, args.lm_eval_python) == (True, 0.1, 10, "/opt/py")
    with pytest.raises(SystemExit):
        _parser().parse_args(["evaluate", "--model", "m", "--lm-eval-limit", "0"])


def _report(ppl: float = 20.0) -> dict:
    return compare(_measurement("q", ppl, 10), _measurement("b", 20.0, 10), Thresholds())


def test_the_lm_eval_section_and_its_failures_join_the_report() -> None:
    passing = with_lm_eval(_report(), BASE_SCORES, BASE_SCORES, 0.05)
    assert passing["passed"] and passing["failures"] == []
    assert passing["lm_eval"] == {
        "max_score_drop": 0.05,
        "scores": {"model": BASE_SCORES, "baseline": BASE_SCORES},
        "deltas": {f"{MC}/acc": 0.0, f"{MC}/acc_norm": 0.0, f"{QA}/contains": 0.0},
        "passed": True,
    }
    failing = with_lm_eval(_report(ppl=30.0), DROPPED, BASE_SCORES, 0.05)
    assert not failing["passed"] and not failing["lm_eval"]["passed"]
    assert failing["failures"][0].startswith("perplexity rose") and failing["failures"][1] == QA_FAILURE


def test_the_gate_refuses_a_variant_whose_evaluate_report_lm_eval_failed(tmp_path: Path) -> None:
    (tmp_path / "fp8.json").write_text(json.dumps(with_lm_eval(_report(), DROPPED, BASE_SCORES, 0.05)))
    (tmp_path / "awq.json").write_text(json.dumps(with_lm_eval(_report(), BASE_SCORES, BASE_SCORES, 0.05)))
    verdicts = read_gate_reports(tmp_path, ["fp8", "awq"])
    assert not verdicts["fp8"].passed and QA_FAILURE in verdicts["fp8"].reason
    assert verdicts["awq"].passed


@pytest.fixture
def two_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    candidate, baseline = _checkpoint(tmp_path / "q"), tmp_path / "base"
    baseline.mkdir()
    monkeypatch.setattr(runner, "measure_model", lambda model, *_a, **_k: _measurement(str(model), 20.0, 10))
    monkeypatch.setattr(lm_eval_runner, "check_lm_eval", lambda python: None)
    return ["evaluate", "--model", str(candidate), "--baseline", str(baseline), "--lm-eval", "--lm-eval-limit", "5"]


@pytest.mark.parametrize(("model_scores", "code"), [(BASE_SCORES, 0), (DROPPED, 1)])
def test_evaluate_serves_each_model_and_writes_the_lm_eval_verdict(
    two_checkpoints: list[str], monkeypatch: pytest.MonkeyPatch, model_scores: dict, code: int
) -> None:
    served: list[ServedModel] = []

    def score(model: ServedModel, work: Path, python: str, limit: int | None = None) -> dict:
        served.append(model)
        assert limit == 5
        return model_scores if model.served_name == "model" else BASE_SCORES

    monkeypatch.setattr(lm_eval_runner, "score_model", score)
    assert evaluate_command.run(_parser().parse_args(two_checkpoints)) == code
    model, baseline = two_checkpoints[2], two_checkpoints[4]
    assert [(m.served_name, str(m.path)) for m in served] == [("baseline", baseline), ("model", model)]
    report = json.loads((Path(model) / "evaluation_report.json").read_text())
    assert report["lm_eval"]["scores"] == {"model": model_scores, "baseline": BASE_SCORES}
    assert report["passed"] is (code == 0) and report["failures"] == ([] if code == 0 else [QA_FAILURE])


def test_lm_eval_that_cannot_run_is_an_error_not_a_verdict(
    two_checkpoints: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*_: object, **__: object) -> dict:
        raise runner.RunnerError("vLLM's server for q did not start")

    monkeypatch.setattr(lm_eval_runner, "score_model", broken)
    assert evaluate_command.run(_parser().parse_args(two_checkpoints)) == 2
    assert "did not start" in capsys.readouterr().err
    assert not (Path(two_checkpoints[2]) / "evaluation_report.json").exists()


def test_a_missing_lm_eval_stops_evaluate_before_any_model_loads(
    two_checkpoints: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.undo()  # the real check, and a measurement that must not happen
    monkeypatch.setattr(runner, "measure_model", lambda *_a, **_k: pytest.fail("measured before the check"))
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'lm_eval'\" >&2\nexit 1\n")
    python.chmod(0o755)
    assert evaluate_command.run(_parser().parse_args([*two_checkpoints, "--lm-eval-python", str(python)])) == 2
    assert "cannot import lm_eval (ModuleNotFoundError" in capsys.readouterr().err
    missing = [*two_checkpoints, "--lm-eval-python", str(tmp_path / "nowhere")]
    assert evaluate_command.run(_parser().parse_args(missing)) == 2
    assert "cannot run" in capsys.readouterr().err


def test_the_server_command_carries_the_models_settings() -> None:
    model = ServedModel(Path("/ckpt"), "model", "bfloat16", 1024, "int8-weight-only", "fp8")
    cmd = lm_eval_runner.server_command(model, 8123, module="vllm.x")
    assert cmd[1:3] == ["-m", "vllm.x"]
    flags = {flag: cmd[i + 1] for i, flag in enumerate(cmd[:-1]) if flag.startswith("--")}
    assert flags["--model"] == "/ckpt" and flags["--port"] == "8123" and flags["--dtype"] == "bfloat16"
    assert flags["--quantization"] == "int8_per_channel_weight_only" and flags["--kv-cache-dtype"] == "fp8"
    assert "--enforce-eager" in cmd and flags["--max-model-len"] == "1024"
    plain = lm_eval_runner.server_command(ServedModel(Path("/b"), "baseline", "float32", 512), 1, module="m")
    assert "--quantization" not in plain and "--kv-cache-dtype" not in plain
    assert "--gpu-memory-utilization" not in plain and "--kv-cache-memory-bytes" not in plain


def test_the_servers_take_evaluates_gpu_memory_settings(
    two_checkpoints: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both lm-eval servers start with the share and fixed KV cache the perplexity engines had."""
    served: list[ServedModel] = []
    monkeypatch.setattr(lm_eval_runner, "score_model", lambda model, *_: served.append(model) or BASE_SCORES)
    argv = [*two_checkpoints, "--gpu-memory-utilization", "0.2", "--kv-cache-memory-bytes", "1073741824"]
    assert evaluate_command.run(_parser().parse_args(argv)) == 0
    assert len(served) == 2
    for model in served:
        flags = lm_eval_runner.server_command(model, 1, module="m")
        assert flags[-4:] == ["--gpu-memory-utilization", "0.2", "--kv-cache-memory-bytes", "1073741824"]


@pytest.mark.parametrize("module", SERVER_MAINS)
def test_the_server_module_is_told_from_vllms_files(tmp_path: Path, module: str) -> None:
    source = tmp_path.joinpath(*module.split(".")[1:]).with_suffix(".py")
    source.parent.mkdir(parents=True)
    source.write_text("")
    assert openai_server_module(tmp_path) == module
    with pytest.raises(ImportError, match="no known OpenAI server"):
        openai_server_module(tmp_path / "elsewhere")


# A stand-in for vLLM's server: answers /health and has a child, as vLLM has its engine core. Who
# ignores SIGTERM: "none", "child" (it would outlive the server) or "both".
FAKE_SERVER = """
import http.server, signal, subprocess, sys
port, pid_file, deaf = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ignore = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); " if deaf != "none" else ""
child = subprocess.Popen([sys.executable, "-c", ignore + "import time; time.sleep(600)"])
open(pid_file, "w").write(str(child.pid))
if deaf == "both":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


def _gone(pid: int) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.01)
    return False


@pytest.mark.parametrize("deaf", ["none", "child", "both"])
def test_the_server_and_its_children_are_stopped_whatever_happens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deaf: str
) -> None:
    pid_file = tmp_path / "child.pid"
    command = lambda model, port: [sys.executable, "-c", FAKE_SERVER, str(port), str(pid_file), deaf]  # noqa: E731
    monkeypatch.setattr(lm_eval_runner, "server_command", command)
    monkeypatch.setattr(lm_eval_runner, "HEALTH_POLL_S", 0.02)
    monkeypatch.setattr(lm_eval_runner, "STOP_GRACE_S", 0.2)
    model = ServedModel(tmp_path, "model", "float32", 512)
    with pytest.raises(RuntimeError, match="lm-eval broke"), lm_eval_runner.serving(model, tmp_path / "log") as url:
        assert url.startswith("http://127.0.0.1:")
        while not pid_file.is_file() or not pid_file.read_text():  # the child is there to be stopped
            time.sleep(0.01)
        raise RuntimeError("lm-eval broke")
    assert _gone(int(pid_file.read_text())), "the server's child outlived it"


def test_a_server_that_exits_at_start_is_an_error_with_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    command = lambda model, port: [sys.executable, "-c", "print('no model here'); raise SystemExit(3)"]  # noqa: E731
    monkeypatch.setattr(lm_eval_runner, "server_command", command)
    monkeypatch.setattr(lm_eval_runner, "HEALTH_POLL_S", 0.02)
    with pytest.raises(runner.RunnerError, match=r"did not start(.|\n)*no model here"):
        with lm_eval_runner.serving(ServedModel(tmp_path, "model", "float32", 512), tmp_path / "log"):
            pytest.fail("served")
