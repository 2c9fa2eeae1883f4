"""serve-app prepare-model: convert the embedded SmolLM2 GGUF into a cached safetensors checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("prepare-model", help="prepare the embedded SmolLM2-135M-Instruct checkpoint (idempotent)")
    p.add_argument("--cache-dir", type=Path, default=None, help="model cache folder (default: user cache dir)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from serve_app.models.embedded import prepare_smollm2

    path = prepare_smollm2(args.cache_dir, progress=not args.quiet)
    print(path)
    return 0
