"""Options and the exit of the whole test tree.

The fault suite's options live here, not in tests/faults/conftest.py, so that ``pytest tests
--faults-report DIR`` (the CI's one run, through PYTEST_ADDOPTS) accepts them: pytest reads only
the top conftest's options when it starts from ``tests``.

The process ends with pytest's own exit status, without the interpreter's teardown: the
integration modules start and stop Ray many times in this one process, and Ray's native state
left behind can crash that teardown (ray-project/ray#31145). One CI run passed every test, printed
its summary and then died of a segmentation fault, which failed the run. What pytest decided
stays the verdict: the status is the one it computed, after every report was written.
"""

from __future__ import annotations

import os
import sys

import pytest

EXIT_STATUS = pytest.StashKey[int]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("faults")
    group.addoption("--soak", action="store_true", default=False, help="run every fault scenario, longer")
    group.addoption("--faults-report", default=None, help="directory for faults.json and faults.md")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    status = config.stash.get(EXIT_STATUS, None)
    if status is None:  # no session ran (``--help``, a usage error): the normal exit
        return
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():  # a module that did not stop its Ray: stop it here
        ray.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
