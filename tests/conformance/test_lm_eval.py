"""lm-eval through the OpenAI API: the project's own tasks (serve_app/data/lm_eval) score the same
through this stack as on plain vLLM.

* ``serve_app_facts_mc`` with ``local-completions``: loglikelihood requests (token-id prompts,
  ``echo: true``, ``logprobs: 1``, ``max_tokens: 1``) on /v1/completions;
* ``serve_app_facts_qa`` with ``local-chat-completions``: greedy replies on /v1/chat/completions.

The servers are the conformance suite's (``sides``: plain vLLM with configs/local.yaml's flags, and
the stack with configs/local.yaml's chat model), started once for the package. lm-eval runs against
both at the same time, one request at a time each, and both run the same vLLM engine in fp32, so
greedy scores must be equal. lm-eval runs as a subprocess
from its own venv (scripts/setup_eval_env.sh, run by make install-test); without it the tests are
skipped, and fail under CI=true.
"""

from __future__ import annotations

import math
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.seed_table import MODEL_ID
from serve_app.quantize.lm_eval_runner import check_lm_eval
from serve_app.quantize.lm_eval_task import (
    MC_TASK,
    QA_TASK,
    TASKS,
    lm_eval_command,
    lm_eval_python,
    read_samples,
    read_scores,
)
from serve_app.quantize.runner import RunnerError
from tests.conformance.conftest import Sides

pytestmark = pytest.mark.integration

LM_EVAL_TIMEOUT_S = 900
# Per-item loglikelihoods may differ by fp32 noise at most; the closest call between two choices in
# the task is far wider than this, so the chosen answers (and the scores) must match exactly.
LOGPROB_ABS_TOL = 1e-3


@dataclass
class LmEvalResult:
    task: str
    returncode: int
    output_path: Path
    log_tail: str

    def check(self, server: str) -> None:
        assert self.returncode == 0, f"lm-eval {self.task} against {server} failed:\n{self.log_tail}"


ServerResults = dict[str, LmEvalResult]


@pytest.fixture(scope="module")
def lm_eval_python_path() -> str:
    python = lm_eval_python()
    try:
        check_lm_eval(python)  # the probe `serve-app evaluate --lm-eval` runs
    except RunnerError as err:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(str(err))  # CI installs it: a skip there would hide a broken set-up
        pytest.skip(str(err))
    return python


@pytest.fixture(scope="module")
def model_dir() -> Path:
    from serve_app.models.embedded import resolve_source

    return resolve_source(f"embedded:{MODEL_ID}", None)


def run_lm_eval(task: str, base_url: str, out: Path, tokenizer: Path, python: str) -> LmEvalResult:
    run = lm_eval_command(task, base_url, MODEL_ID, out / task, tokenizer=tokenizer, python=python)
    # A datasets cache of this run's own: the JSONL is converted afresh, nothing is shared.
    env = os.environ | run.env | {"HF_DATASETS_CACHE": str(out / "hf-datasets")}
    try:
        proc = subprocess.run(
            run.argv, cwd=run.cwd, env=env, capture_output=True, text=True, timeout=LM_EVAL_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        return LmEvalResult(task, -1, run.output_path, f"timed out after {exc.timeout} s")
    return LmEvalResult(task, proc.returncode, run.output_path, (proc.stdout + proc.stderr)[-6000:])


def run_all_tasks(base_url: str, out: Path, tokenizer: Path, python: str) -> ServerResults:
    out.mkdir(parents=True, exist_ok=True)
    return {task: run_lm_eval(task, base_url, out, tokenizer, python) for task in TASKS}


@dataclass(frozen=True)
class BothResults:
    plain: ServerResults
    stack: ServerResults


@pytest.fixture(scope="module")
def results(
    sides: Sides, tmp_path_factory: pytest.TempPathFactory, model_dir: Path, lm_eval_python_path: str
) -> BothResults:
    """Both tasks against plain vLLM and against the stack, the two sides at once."""
    if not sides.target.is_stack:
        pytest.skip("lm-eval compares the stack with plain vLLM (--conformance-stack=plain runs none)")
    out = tmp_path_factory.mktemp("lm-eval")
    with ThreadPoolExecutor(max_workers=2) as pool:
        plain = pool.submit(run_all_tasks, sides.reference.chat_url, out / "plain", model_dir, lm_eval_python_path)
        stack = pool.submit(run_all_tasks, sides.target.chat_url, out / "stack", model_dir, lm_eval_python_path)
        return BothResults(plain.result(), stack.result())


def checked_pair(plain: ServerResults, stack: ServerResults, task: str) -> tuple[LmEvalResult, LmEvalResult]:
    plain[task].check("plain vLLM")
    stack[task].check("the stack")
    return plain[task], stack[task]


def loglikelihoods(result: LmEvalResult) -> list[list[float]]:
    """Per document, the loglikelihood of each choice as lm-eval logged it."""
    return [[float(resp[0][0]) for resp in s["resps"]] for s in read_samples(result.output_path, result.task)]


def test_multiple_choice_matches_plain_vllm(results: BothResults) -> None:
    plain, stack = checked_pair(results.plain, results.stack, MC_TASK)
    plain_ll, stack_ll = loglikelihoods(plain), loglikelihoods(stack)
    assert len(plain_ll) == len(stack_ll)
    differing = [
        (doc_id, ours, theirs)
        for doc_id, (ours, theirs) in enumerate(zip(stack_ll, plain_ll, strict=True))
        if not all(math.isclose(a, b, abs_tol=LOGPROB_ABS_TOL) for a, b in zip(ours, theirs, strict=True))
    ]
    assert not differing, f"choice loglikelihoods (doc, stack, plain vLLM) differ: {differing[:5]}"
    plain_scores, stack_scores = read_scores(plain.output_path, MC_TASK), read_scores(stack.output_path, MC_TASK)
    assert plain_scores.keys() >= {"acc", "acc_norm"}
    assert stack_scores == plain_scores


def test_generation_matches_plain_vllm(results: BothResults) -> None:
    plain, stack = checked_pair(results.plain, results.stack, QA_TASK)
    plain_scores, stack_scores = read_scores(plain.output_path, QA_TASK), read_scores(stack.output_path, QA_TASK)
    assert "contains" in plain_scores
    replies = {
        name: [s["resps"][0][0] for s in read_samples(r.output_path, QA_TASK)]
        for name, r in (("plain", plain), ("stack", stack))
    }
    differing = [
        (doc_id, ours, theirs)
        for doc_id, (ours, theirs) in enumerate(zip(replies["stack"], replies["plain"], strict=True))
        if ours != theirs
    ]
    assert stack_scores == plain_scores, f"scores differ; replies (doc, stack, plain vLLM): {differing}"
