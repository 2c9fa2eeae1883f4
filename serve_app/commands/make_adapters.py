"""serve-app make-adapters: train the embedded SmolLM2's small demo/test LoRA adapters (idempotent)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from serve_app.models.embedded_adapters import EMBEDDED_ADAPTERS

    p = sub.add_parser(
        "make-adapters",
        help="train the embedded SmolLM2's LoRA adapters from shipped data into the cache (idempotent)",
    )
    p.add_argument("names", nargs="*", help=f"adapters to make (default: all of {', '.join(EMBEDDED_ADAPTERS)})")
    p.add_argument("--cache-dir", type=Path, default=None, help="model cache folder (default: user cache dir)")
    p.add_argument("--quiet", action="store_true", help="no training progress")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from serve_app.models.embedded_adapters import EMBEDDED_ADAPTERS, is_prepared, prepare_adapter

    unknown = sorted(set(args.names) - set(EMBEDDED_ADAPTERS))
    if unknown:
        print(f"unknown adapter(s) {unknown}; known: {', '.join(EMBEDDED_ADAPTERS)}")
        return 2
    for name in args.names or EMBEDDED_ADAPTERS:
        cached = is_prepared(name, args.cache_dir)
        started = time.monotonic()
        path = prepare_adapter(name, args.cache_dir, quiet=args.quiet)
        took = "cached" if cached else f"trained in {time.monotonic() - started:.0f} s"
        print(f"{name}: {path} ({took})")
    return 0
