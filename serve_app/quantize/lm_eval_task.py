"""lm-eval through the OpenAI API on the project's own tasks (``serve_app/data/lm_eval``), no hub.

Two tasks, each with the lm-eval model type it is meant for:

* ``serve_app_facts_mc``: multiple choice, scored by loglikelihood with ``local-completions`` (token-id
  prompts with ``echo``/``logprobs`` on ``/v1/completions``; needs the served model's tokenizer folder);
* ``serve_app_facts_qa``: greedy short answers with ``local-chat-completions`` on ``/v1/chat/completions``.

This module only builds command lines and reads lm-eval's JSON output: lm-eval runs as a subprocess in
its own venv (``scripts/setup_eval_env.sh``), so nothing here imports lm-eval, Ray or vLLM.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASK_DIR = Path(__file__).resolve().parents[1] / "data" / "lm_eval"
MC_TASK = "serve_app_facts_mc"
QA_TASK = "serve_app_facts_qa"
# task -> (lm-eval model type, the API route it calls)
TASKS: dict[str, tuple[str, str]] = {
    MC_TASK: ("local-completions", "/v1/completions"),
    QA_TASK: ("local-chat-completions", "/v1/chat/completions"),
}
# lm-eval reads the task's JSONL with the `datasets` json builder: never let it reach for a hub.
OFFLINE_ENV = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@dataclass(frozen=True)
class LmEvalRun:
    """One lm-eval invocation: run ``argv`` in ``cwd`` (the task folder: data_files are relative to it)
    with ``env`` added to the environment; the results land under ``output_path``."""

    argv: list[str]
    cwd: Path
    output_path: Path
    env: dict[str, str] = field(default_factory=dict)


def lm_eval_python() -> str:
    """The interpreter with lm-eval: $LM_EVAL_PYTHON, else the checkout's .venv-eval, else this one."""
    if explicit := os.environ.get("LM_EVAL_PYTHON"):
        return explicit
    checkout_venv = TASK_DIR.parents[2] / ".venv-eval" / "bin" / "python"
    return str(checkout_venv) if checkout_venv.is_file() else sys.executable


def model_args(task: str, base_url: str, model: str, tokenizer: Path | str | None = None) -> str:
    """lm-eval's ``--model_args`` for ``task`` against the server at ``base_url`` (no trailing /v1).

    Requests go one at a time, so each server sees the same sequence of single requests; retries are
    off so that a failing server fails the run instead of being asked again."""
    _, route = TASKS[task]
    args = {"model": model, "base_url": base_url.rstrip("/") + route, "num_concurrent": 1, "max_retries": 1}
    if task == MC_TASK:
        if tokenizer is None:
            raise ValueError(f"{MC_TASK} needs the served model's tokenizer folder (loglikelihood is tokenized)")
        args |= {"tokenizer_backend": "huggingface", "tokenizer": str(tokenizer), "tokenized_requests": True}
    return ",".join(f"{key}={value}" for key, value in args.items())


def lm_eval_command(
    task: str,
    base_url: str,
    model: str,
    output_path: Path,
    tokenizer: Path | str | None = None,
    python: str | None = None,
    limit: int | None = None,
) -> LmEvalRun:
    """The lm-eval run of one of :data:`TASKS` against ``base_url``; results and per-item samples
    are written under ``output_path``."""
    model_type, _ = TASKS[task]
    argv = [python or lm_eval_python(), "-m", "lm_eval", "run", "--model", model_type]
    argv += ["--model_args", model_args(task, base_url, model, tokenizer), "--tasks", task]
    argv += ["--include_path", str(TASK_DIR), "--output_path", str(output_path), "--log_samples"]
    argv += ["--batch_size", "1"]
    if model_type == "local-chat-completions":
        argv.append("--apply_chat_template")
    if limit is not None:
        argv += ["--limit", str(limit)]
    return LmEvalRun(argv, TASK_DIR, output_path, dict(OFFLINE_ENV))


def _newest(output_path: Path, pattern: str) -> Path:
    found = sorted(output_path.rglob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no {pattern} under {output_path}")
    return found[-1]


def read_scores(output_path: Path, task: str) -> dict[str, float]:
    """The task's metrics from lm-eval's newest results file, e.g. ``{"acc": 0.5, "acc_norm": 0.45}``
    (standard errors and filter suffixes dropped)."""
    return task_scores(json.loads(_newest(output_path, "results_*.json").read_text())["results"][task])


def task_scores(results: dict[str, Any]) -> dict[str, float]:
    """The metrics of one task's entry in lm-eval's ``results`` (a file's or ``simple_evaluate``'s)."""
    scores = {}
    for key, value in results.items():
        metric, comma, _ = key.partition(",")  # metrics are "name,filter"; "alias", "sample_len" are not
        if comma and not metric.endswith("_stderr") and isinstance(value, int | float):
            scores[metric] = float(value)
    return scores


def read_samples(output_path: Path, task: str) -> list[dict[str, Any]]:
    """lm-eval's per-item log (``--log_samples``) of the task, ordered by document id."""
    path = _newest(output_path, f"samples_{task}_*.jsonl")
    samples = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(samples, key=lambda s: s["doc_id"])
