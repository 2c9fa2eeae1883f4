"""The unit tier is a unit tier: importing every module of it imports neither Ray, torch nor vLLM
(checked in a fresh interpreter, so that nothing this process already loaded hides an import),
and a warning fails the test that raised it (tests/unit/conftest.py; a deprecation fails one in every
tier: pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest

from tests.unit.conftest import HEAVY_MODULES, WARNINGS_ALLOWED, unit_warning_filters

UNIT_DIR = Path(__file__).resolve().parent
REPO = UNIT_DIR.parents[1]


def test_importing_every_unit_test_module_imports_nothing_heavy() -> None:
    modules = sorted(f"tests.unit.{p.stem}" for p in UNIT_DIR.glob("*.py") if p.stem != "__init__")
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n"
    )
    # A warning at import time is an error too (the marks below cover only what runs in a test).
    filters = [arg for entry in unit_warning_filters() for arg in ("-W", entry)]
    done = subprocess.run([sys.executable, *filters, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", "move tests that need these to tests/integration"


def test_a_warning_in_a_unit_test_is_an_error(request: pytest.FixtureRequest) -> None:
    marks = [m.args for m in request.node.iter_markers("filterwarnings")]
    assert marks and marks[0][0] == "error", marks
    with pytest.raises(DeprecationWarning, match="a third-party deprecation"):
        warnings.warn_explicit("a third-party deprecation", DeprecationWarning, "somelib.py", 1, module="somelib")
    with pytest.raises(ResourceWarning):
        warnings.warn("an unclosed socket", ResourceWarning, stacklevel=1)


def test_each_allowed_warning_is_named_and_justified() -> None:
    for entry, why in WARNINGS_ALLOWED:
        action, message, category, module = (entry.split(":") + [""] * 4)[:4]
        assert action == "ignore" and message and category and module, f"name message, class and module: {entry}"
        assert len(why.split()) >= 3, f"say why {entry} cannot be fixed"


def test_deprecations_fail_every_tier_and_each_ignored_one_is_named_and_justified() -> None:
    text = (REPO / "pyproject.toml").read_text()
    filters = tomllib.loads(text)["tool"]["pytest"]["ini_options"]["filterwarnings"]
    errors = ["error::DeprecationWarning", "error::PendingDeprecationWarning", "error::FutureWarning"]
    assert filters[: len(errors)] == errors  # first: a later filter wins, so the exceptions follow
    lines = text.splitlines()
    for entry in filters[len(errors) :]:
        action, message, category, module = (entry.split(":") + [""] * 4)[:4]
        assert action == "ignore" and message and category and module, f"name message, class and module: {entry}"
        at = next(i for i, line in enumerate(lines) if line.strip().startswith(f'"ignore:{message}:'))
        assert lines[at - 1].strip().startswith("#"), f"say above it why {entry} cannot be fixed here"
