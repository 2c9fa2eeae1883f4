"""One exception hierarchy: every exception class serve_app defines derives from ServeAppError."""

from __future__ import annotations

import ast
from pathlib import Path

import serve_app
from serve_app.errors import ServeAppError

PACKAGE = Path(serve_app.__file__).resolve().parent


def _exception_classes() -> list[tuple[str, list[str]]]:
    """(module path: class name, its base names) for every class named ...Error or ...Exception."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith(("Error", "Exception")):
                bases = [ast.unparse(b) for b in node.bases]
                found.append((f"{path.relative_to(PACKAGE)}: {node.name}", bases))
    return found


def test_every_project_error_derives_from_the_base() -> None:
    classes = _exception_classes()
    assert len(classes) >= 17
    stray = [name for name, bases in classes if name != "errors.py: ServeAppError" and "ServeAppError" not in bases]
    assert not stray, f"derive these from serve_app.errors.ServeAppError: {stray}"


def test_errors_keep_the_builtin_base_callers_catch() -> None:
    from serve_app.config import ConfigError
    from serve_app.engine.types import EngineDeadError

    assert issubclass(ConfigError, ServeAppError) and issubclass(ConfigError, ValueError)
    assert issubclass(EngineDeadError, ServeAppError) and issubclass(EngineDeadError, RuntimeError)
