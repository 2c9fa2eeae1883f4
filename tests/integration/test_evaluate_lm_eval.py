"""``serve-app evaluate --lm-eval`` end to end: the real command (eval workers, then vLLM's own OpenAI
server per model, then lm-eval from its own venv) on the embedded SmolLM2 against itself in float32
(bf16 with torch.compile answers garbage on this CPU). The same model, greedy, on the same engine:
the lm-eval scores must be equal and the report must pass. A few items per task, and the shipped
held-out text and golden questions cut to a few lines, keep it to about three minutes on 2 cores:
four engine starts (two eval workers, two servers) are most of it. Without lm-eval it is skipped,
and fails under CI=true (which installs it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serve_app.quantize.calibration import DEFAULT_GOLDEN, DEFAULT_HELDOUT, shipped
from serve_app.quantize.lm_eval_task import TASKS, lm_eval_python

pytestmark = pytest.mark.integration

MODEL = "embedded:smollm2-135m-instruct"
ITEMS_PER_TASK = 10
TIMEOUT_S = 600


@pytest.fixture
def lm_eval_interpreter() -> str:
    python = lm_eval_python()
    if subprocess.run([python, "-c", "import lm_eval"], capture_output=True, check=False).returncode != 0:
        missing = f"lm-eval is not importable by {python}; run scripts/setup_eval_env.sh (make install-test does)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(missing)  # CI installs it: a skip there would hide a broken set-up
        pytest.skip(missing)
    return python


def _first_lines(name: str, count: int, folder: Path) -> Path:
    cut = folder / name
    cut.write_text("\n".join(shipped(name).read_text().splitlines()[:count]) + "\n")
    return cut


def test_evaluate_with_lm_eval_scores_a_model_equal_to_itself(tmp_path: Path, lm_eval_interpreter: str) -> None:
    report_path = tmp_path / "report.json"
    heldout, golden = _first_lines(DEFAULT_HELDOUT, 1, tmp_path), _first_lines(DEFAULT_GOLDEN, 3, tmp_path)
    cmd = [sys.executable, "-m", "serve_app.cli", "evaluate", "--model", MODEL, "--baseline", MODEL]
    cmd += ["--dtype", "float32", "--heldout", str(heldout), "--golden", str(golden), "--max-model-len", "512"]
    cmd += ["--report", str(report_path), "--lm-eval"]
    cmd += ["--lm-eval-limit", str(ITEMS_PER_TASK), "--lm-eval-python", lm_eval_interpreter]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    print(f"\nserve-app evaluate --lm-eval took {time.monotonic() - started:.0f} s")
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stderr[-6000:]}"

    report = json.loads(report_path.read_text())
    section = report["lm_eval"]
    scores = section["scores"]
    assert set(scores["model"]) == set(TASKS), scores
    assert scores["model"] == scores["baseline"]
    assert section["deltas"] and all(delta == 0 for delta in section["deltas"].values()), section
    assert section["passed"] is True and section["max_score_drop"] == 0.05
    assert report["passed"] is True and report["failures"] == []
    assert report["data"]["lm_eval_limit"] == ITEMS_PER_TASK
