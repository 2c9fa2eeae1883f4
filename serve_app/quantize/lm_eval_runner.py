"""Score one model on the project's lm-eval tasks through vLLM's own OpenAI server
(``serve-app evaluate --lm-eval``).

The model is served by plain vLLM's server (not this stack: the evaluation judges the checkpoint, not
the serving path) in a child process of its own session, so that stopping the session also ends the
engine processes the server starts. The caller scores one model at a time: on a 2-core CPU host two
engines would only take turns, and on a GPU each would have to size its memory around the other.
lm-eval runs as a subprocess from its own venv (:mod:`serve_app.quantize.lm_eval_task`). Any failure
(the server does not start, lm-eval exits non-zero) raises :class:`RunnerError`: never a score.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from serve_app.bench.readiness import wait_until_ok
from serve_app.engine.vllm_compat import openai_server_module
from serve_app.ports import free_port
from serve_app.quantize.lm_eval_task import MC_TASK, TASKS, lm_eval_command, read_scores
from serve_app.quantize.onload import vllm_quantization_name
from serve_app.quantize.runner import CPU_KV_SPACE, EngineMemory, RunnerError

START_TIMEOUT_S = 900.0  # a cold engine start on 2 shared cores, with a benchmark beside it
LM_EVAL_TIMEOUT_S = 3600.0  # one task; lm-eval retries a request once, so a stuck run still ends
STOP_GRACE_S = 30.0
HEALTH_POLL_S = 1.0
LOG_TAIL_LINES = 30
SETUP_HINT = "create lm-eval's venv with scripts/setup_eval_env.sh (make install-test does), or pass --lm-eval-python"


@dataclass(frozen=True)
class ServedModel:
    """What vLLM's server loads, with the same settings the evaluation worker measured it with."""

    path: Path
    served_name: str
    dtype: str
    max_model_len: int
    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    memory: EngineMemory = field(default_factory=EngineMemory)


def server_command(model: ServedModel, port: int, module: str | None = None) -> list[str]:
    """vLLM's server command line: eager and seeded like the evaluation worker's engine, so greedy
    answers match its golden replies' settings."""
    cmd = [sys.executable, "-m", module or openai_server_module(), "--model", str(model.path)]
    cmd += ["--served-model-name", model.served_name, "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--dtype", model.dtype, "--max-model-len", str(model.max_model_len), "--enforce-eager", "--seed", "0"]
    if model.quantization:
        cmd += ["--quantization", vllm_quantization_name(model.quantization)]
    if model.kv_cache_dtype != "auto":
        cmd += ["--kv-cache-dtype", model.kv_cache_dtype]
    return cmd + model.memory.flags()


def check_lm_eval(python: str) -> None:
    """Raise RunnerError unless ``python`` imports lm_eval."""
    try:
        probe = subprocess.run([python, "-c", "import lm_eval"], capture_output=True, text=True, check=False)
    except OSError as err:
        raise RunnerError(f"cannot run {python} for lm-eval: {err}; {SETUP_HINT}") from None
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise RunnerError(f"{python} cannot import lm_eval ({last}); {SETUP_HINT}")


def log_tail(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:] if log.is_file() else []
    return f"--- end of {log}:\n" + "\n".join(lines)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (its engine processes share it), then SIGKILL to
    whatever of the group is left after the grace period or outlived the server itself."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_GRACE_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@contextlib.contextmanager
def serving(model: ServedModel, log: Path, timeout_s: float = START_TIMEOUT_S) -> Iterator[str]:
    """The server's base URL once /health answers; the server is stopped on leaving, whatever happened."""
    port = free_port()
    env = dict(os.environ)
    env.setdefault(*CPU_KV_SPACE)
    try:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                server_command(model, port), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
    except (ImportError, OSError) as err:  # no vLLM here, or no room for the log
        raise RunnerError(f"cannot start vLLM's server for {model.path}: {err}") from None
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_ok(f"{url}/health", timeout_s, process=proc, period_s=HEALTH_POLL_S)
        except (RuntimeError, TimeoutError) as err:
            raise RunnerError(f"vLLM's server for {model.path} did not start: {err}\n{log_tail(log)}") from None
        yield url
        # A free port can be taken between our probe and the server's bind: then the scores came
        # from whoever answered, and only a server that is still running proves they were its own.
        if proc.poll() is not None:
            raise RunnerError(f"vLLM's server for {model.path} exited ({proc.returncode}) while scored")
    finally:
        stop_server(proc)


def run_task(task: str, url: str, model: ServedModel, work: Path, python: str, limit: int | None) -> dict[str, float]:
    folder = work / model.served_name / task
    tokenizer = model.path if task == MC_TASK else None
    run = lm_eval_command(task, url, model.served_name, folder, tokenizer=tokenizer, python=python, limit=limit)
    # A datasets cache of this run's own: nothing converted by another run (or version) is reused.
    env = os.environ | run.env | {"HF_DATASETS_CACHE": str(work / "hf-datasets")}
    log = work / f"lm-eval-{model.served_name}-{task}.log"
    with log.open("wb") as out:
        try:
            code = subprocess.run(
                run.argv, cwd=run.cwd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=LM_EVAL_TIMEOUT_S
            ).returncode
        except subprocess.TimeoutExpired:
            raise RunnerError(f"lm-eval {task} on {model.path} timed out\n{log_tail(log)}") from None
    if code != 0:
        raise RunnerError(f"lm-eval {task} on {model.path} failed (exit {code})\n{log_tail(log)}")
    try:
        return read_scores(folder, task)
    except (OSError, KeyError, ValueError) as err:
        raise RunnerError(f"lm-eval {task} on {model.path} left no scores: {err!r}\n{log_tail(log)}") from None


def score_model(model: ServedModel, work: Path, python: str, limit: int | None = None) -> dict[str, dict[str, float]]:
    """Both tasks' scores for ``model``, ``{task: {metric: value}}``, from a server of its own."""
    work.mkdir(parents=True, exist_ok=True)
    print(f"lm-eval: serving {model.served_name} ({model.path})", file=sys.stderr, flush=True)
    scores = {}
    with serving(model, work / f"vllm-{model.served_name}.log") as url:
        for task in TASKS:
            scores[task] = run_task(task, url, model, work, python, limit)
            print(f"lm-eval: {model.served_name} {task} {scores[task]}", file=sys.stderr, flush=True)
    return scores
