"""Options of the whole test tree. The fault suite's live here, not in tests/faults/conftest.py,
so that ``pytest tests --faults-report DIR`` (the CI's one run, through PYTEST_ADDOPTS) accepts them:
pytest reads only the top conftest's options when it starts from ``tests``."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("faults")
    group.addoption("--soak", action="store_true", default=False, help="run every fault scenario, longer")
    group.addoption("--faults-report", default=None, help="directory for faults.json and faults.md")
