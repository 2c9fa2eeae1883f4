"""``serve-app evaluate --lm-eval``'s real part: vLLM's own OpenAI server started for a model, the
project's lm-eval tasks run against it from lm-eval's own venv, the scores read, and the server
stopped, for the embedded SmolLM2 in float32 (bf16 with torch.compile answers garbage on this CPU).
evaluate does this once for the baseline and once for the model; one model suffices here (that
lm-eval scores equal through two servers of one engine is ``tests/conformance/test_lm_eval.py``'s
check, plain vLLM against the stack).

The command's own wiring around this (flags, the perplexity and golden measurements first, the
report, exit codes) is unit-tested with stand-ins in ``tests/unit/test_evaluate_lm_eval.py`` and
``tests/unit/test_quantize_commands.py``. The whole command, whose perplexity and golden answers
need two more engine starts and whose baseline needs another server (about two minutes of CI on 2
cores), is not run here: the eval worker's real measurements are the recorded runs'
(``benchmarks/results/quantization``, the H200 gate reports). A few items per task keep this test
to about a minute. Without lm-eval it is skipped, and fails under CI=true (which installs it).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from serve_app.models.embedded import resolve_source
from serve_app.quantize.evaluate import with_lm_eval
from serve_app.quantize.lm_eval_runner import ServedModel, check_lm_eval, score_model
from serve_app.quantize.lm_eval_task import MC_TASK, QA_TASK, TASKS, lm_eval_python
from serve_app.quantize.runner import RunnerError

pytestmark = pytest.mark.integration

MODEL = "embedded:smollm2-135m-instruct"
ITEMS_PER_TASK = 10


@pytest.fixture
def lm_eval_interpreter() -> str:
    python = lm_eval_python()
    try:
        check_lm_eval(python)  # the probe evaluate itself runs before any model loads
    except RunnerError as err:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(str(err))  # CI installs it: a skip there would hide a broken set-up
        pytest.skip(str(err))
    return python


def test_a_served_model_is_scored_on_both_tasks_and_its_server_stopped(
    tmp_path: Path, lm_eval_interpreter: str
) -> None:
    path = resolve_source(MODEL, None)
    started = time.monotonic()
    scores = score_model(ServedModel(path, "model", "float32", 512), tmp_path, lm_eval_interpreter, ITEMS_PER_TASK)
    print(f"\nserved and scored in {time.monotonic() - started:.0f} s")

    assert set(scores) == set(TASKS) and all(scores[task] for task in TASKS), scores
    # The scores are the model's, not an empty run's: SmolLM2 answers most of the first items right.
    assert scores[QA_TASK]["contains"] >= 0.5 and scores[MC_TASK]["acc"] >= 0.5, scores
    # No process of the server's session is left (serving() kills its process group).
    assert not _processes_serving(path), _processes_serving(path)
    report = with_lm_eval({"passed": True, "failures": []}, scores, scores, 0.05)
    assert report["lm_eval"]["passed"] is True and report["passed"] is True and report["failures"] == []


def _processes_serving(path: Path) -> list[str]:
    """Command lines of running processes with ``--model PATH`` (vLLM's server has it)."""
    found = subprocess.run(["pgrep", "-af", "--", f"--model {path}"], capture_output=True, text=True, check=False)
    assert found.returncode in (0, 1), found.stderr  # 1: none found; anything else: pgrep failed
    return found.stdout.splitlines()
