"""Deployment gate: a quantized checkpoint is served only with a passing, current evaluation.

Pure apart from reading three small files in the model folder (config.json,
quantization_report.json, evaluation_report.json); it starts nothing and writes nothing. The
app build step calls :func:`check_deployable` for each model after resolving its folder; config
validation itself reads no files.

A folder counts as quantized when its config.json carries ``quantization_config`` or it holds a
``quantization_report.json``. Such a model is refused unless ``evaluation_report.json`` exists,
says ``passed: true`` and was made for this very checkpoint (its fingerprint, see
:func:`serve_app.quantize.report.checkpoint_fingerprint`, matches the folder's) — or the model
config sets ``allow_ungated: true``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from serve_app.errors import ServeAppError
from serve_app.quantize.report import EVAL_REPORT, QUANT_REPORT, checkpoint_fingerprint


class GateError(ServeAppError, RuntimeError):
    """A model that must not be deployed; the message says why and how to proceed."""


class GatedModel(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def allow_ungated(self) -> bool: ...


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise GateError(f"{path}: unreadable ({err})") from None
    if not isinstance(data, dict):
        raise GateError(f"{path}: expected a JSON object")
    return data


def is_quantized_checkpoint(path: Path) -> bool:
    if not path.is_dir():
        return False
    if (path / QUANT_REPORT).is_file():
        return True
    config = _read_json(path / "config.json")
    return bool(config and config.get("quantization_config"))


def refusal_reason(path: Path) -> str | None:
    """Why the quantized checkpoint at ``path`` may not be deployed, or None if it may."""
    if not is_quantized_checkpoint(path):
        return None
    report = _read_json(path / EVAL_REPORT)
    if report is None:
        return f"it has no {EVAL_REPORT}; run `serve-app evaluate --model {path} --baseline <unquantized model>`"
    if report.get("passed") is not True:
        failures = "; ".join(map(str, report.get("failures") or [])) or "no reason recorded"
        return f"its evaluation failed ({failures})"
    recorded = report.get("checkpoint_fingerprint")
    if recorded != checkpoint_fingerprint(path):
        return f"its {EVAL_REPORT} was made for a different checkpoint (the weights or config changed since); re-run it"
    return None


def check_deployable(model_config: GatedModel, path: Path) -> None:
    """Raise :class:`GateError` if ``path`` is a quantized checkpoint without a passing, current
    evaluation and the model config does not set ``allow_ungated: true``."""
    if model_config.allow_ungated:
        return
    reason = refusal_reason(Path(path))
    if reason is not None:
        raise GateError(
            f"model {model_config.id!r}: refusing to deploy the quantized checkpoint {path}: {reason} "
            "(set allow_ungated: true on the model to deploy it anyway)"
        )
