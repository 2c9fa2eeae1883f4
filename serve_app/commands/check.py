"""serve-app check: validate a Ray Serve config file end to end without starting anything."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

APP_IMPORT_PATH = "serve_app.app:build_app"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "check",
        help="validate a serve config: schema (with key paths), quantization gate, adapters, placement, "
        "engine and server options against the installed vLLM",
    )
    p.add_argument("config", type=Path, help="a Ray Serve config file, e.g. configs/local.yaml")
    p.add_argument(
        "--no-engine-options",
        action="store_true",
        help="skip the check against the installed vLLM (e.g. where vLLM is not installed)",
    )
    p.set_defaults(func=run)


def serve_app_applications(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(name, args) of every application in the file that serve_app builds."""
    from serve_app.config import ConfigError

    doc = yaml.safe_load(path.read_text())
    apps = doc.get("applications") if isinstance(doc, dict) else None
    if not isinstance(apps, list) or not apps:
        raise ConfigError(f"{path}: no 'applications' list")
    ours = [
        (str(app.get("name", f"applications[{i}]")), dict(app.get("args") or {}))
        for i, app in enumerate(apps)
        if isinstance(app, dict) and app.get("import_path") == APP_IMPORT_PATH
    ]
    if not ours:
        raise ConfigError(f"{path}: no application with import_path {APP_IMPORT_PATH}")
    return ours


def run(args: argparse.Namespace) -> int:
    from serve_app.errors import ServeAppError
    from serve_app.validate import validate_app

    try:
        for name, app_args in serve_app_applications(args.config):
            config = validate_app(app_args, engine_options=not args.no_engine_options)
            print(f"{args.config}: application {name!r} ok ({', '.join(m.id for m in config.models)})")
    except (ServeAppError, OSError, yaml.YAMLError) as err:
        print(f"{args.config}: {err}", file=sys.stderr)
        return 1
    return 0
