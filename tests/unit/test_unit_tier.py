"""The unit tier is a unit tier: importing every module of it imports neither Ray, torch nor vLLM
(checked in a fresh interpreter, so that nothing this process already loaded hides an import)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.unit.conftest import HEAVY_MODULES

UNIT_DIR = Path(__file__).resolve().parent
REPO = UNIT_DIR.parents[1]


def test_importing_every_unit_test_module_imports_nothing_heavy() -> None:
    modules = sorted(f"tests.unit.{p.stem}" for p in UNIT_DIR.glob("*.py") if p.stem != "__init__")
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", "move tests that need these to tests/integration"
