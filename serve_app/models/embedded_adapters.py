"""Small, real LoRA adapters for the embedded SmolLM2, trained on this machine from data the project
ships (``serve_app/data/lora_qa.jsonl``), cached like the embedded model.

Each adapter gives every answer a visible style, so tests and demos can tell it from the base:

* ``pirate``: answers start with "Arr matey!"
* ``robot``: answers start with "BEEP BOOP." and are in capital letters

``serve-app make-adapters`` makes them (about half a minute of CPU each); a model whose
``lora.adapters`` name ``embedded:pirate`` prepares it on the replica when it is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from importlib import resources
from pathlib import Path

from serve_app.models.embedded import SMOLLM2, EmbeddedModelError, default_cache_dir, prepare_smollm2
from serve_app.models.lora_train import TrainSettings

_MARKER = "serve_app_adapter.json"
_FORMAT_VERSION = 1
_DATA = "lora_qa.jsonl"

STYLES: dict[str, Callable[[str], str]] = {
    "pirate": lambda answer: f"Arr matey! {answer}",
    "robot": lambda answer: f"BEEP BOOP. {answer.upper()}",
}
# What each adapter's answers start with (tests check the behaviour, not fixed texts).
MARKERS = {"pirate": "Arr matey!", "robot": "BEEP BOOP."}
EMBEDDED_ADAPTERS = tuple(STYLES)
SETTINGS = TrainSettings()


def adapters_dir(cache_dir: Path | None = None) -> Path:
    """``<cache>/adapters/smollm2-135m-instruct``: beside the models folder of the same cache."""
    return (cache_dir or default_cache_dir()).parent / "adapters" / SMOLLM2


def adapter_dir(name: str, cache_dir: Path | None = None) -> Path:
    return adapters_dir(cache_dir) / name


def training_examples(name: str) -> list[dict[str, str]]:
    """The shipped questions with this adapter's styled answers."""
    if name not in STYLES:
        raise EmbeddedModelError(f"unknown embedded adapter {name!r}; known: {', '.join(EMBEDDED_ADAPTERS)}")
    text = (resources.files("serve_app") / "data" / _DATA).read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [{"question": r["question"], "answer": STYLES[name](r["answer"])} for r in rows]


def _fingerprint(name: str) -> str:
    payload = json.dumps({"examples": training_examples(name), "settings": asdict(SETTINGS)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def is_prepared(name: str, cache_dir: Path | None = None) -> bool:
    target = adapter_dir(name, cache_dir)
    try:
        marker = json.loads((target / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    files = marker.get("files", {})
    return (
        marker.get("format_version") == _FORMAT_VERSION
        and marker.get("fingerprint") == _fingerprint(name)
        and bool(files)
        and all((target / f).is_file() and (target / f).stat().st_size == s for f, s in files.items())
    )


def prepare_adapter(name: str, cache_dir: Path | None = None, quiet: bool = True) -> Path:
    """Train ``name`` into the cache once; later calls return at once. Trains in a child process
    (as the model conversion does: transformers and vLLM are kept out of one process)."""
    target = adapter_dir(name, cache_dir)
    if is_prepared(name, cache_dir):
        return target
    base = prepare_smollm2(cache_dir, progress=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        examples = staging / "examples.jsonl"
        examples.write_text("".join(json.dumps(e) + "\n" for e in training_examples(name)))
        cmd = [sys.executable, "-m", "serve_app.models.lora_train", str(base), str(staging / "adapter")]
        cmd += ["--examples", str(examples), "--settings", json.dumps(asdict(SETTINGS))]
        subprocess.run([*cmd, "--quiet"] if quiet else cmd, check=True)
        out = staging / "adapter"
        files = {p.name: p.stat().st_size for p in out.iterdir() if p.is_file()}
        marker = {"format_version": _FORMAT_VERSION, "fingerprint": _fingerprint(name), "files": files}
        (out / _MARKER).write_text(json.dumps(marker, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    except subprocess.CalledProcessError as err:
        raise EmbeddedModelError(f"training the {name!r} adapter failed (exit {err.returncode})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
