"""Fault scenarios: one Serve app per module, a ledger per scenario, and the report at the end.

``pytest tests/faults`` runs the quick subset (CI); ``pytest tests/faults --soak`` (``make soak``)
runs every scenario with more load; ``--faults-report DIR`` writes faults.json and faults.md there.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from serve_app.bench.fault_report import text_table, write_fault_report
from serve_app.bench.ledger import ScenarioSummary
from serve_app.bench.provenance import commit


@dataclass(frozen=True)
class Scale:
    """How hard each scenario pushes: the quick subset (CI) or the soak run."""

    soak: bool
    clients: int  # closed-loop clients of the background load
    max_tokens: int
    fault_load_s: float  # how long the load keeps running after a fault, at least
    storm: int  # streams opened at once and cut after their first tokens in the disconnect storm
    overload_s: float
    # router.max_queued_requests after the config change: the clients' load fits (nothing refused),
    # the overload scenario sends 5x as many clients.
    admission_budget: int


# The quick subset's load phases are as long as its assertions need: after a recovery a few
# requests per client (each a second or two at 16 tokens), and an overload that has had both answers
# and refusals (refusals come at once, answers within a request's time).
QUICK = Scale(soak=False, clients=3, max_tokens=16, fault_load_s=4, storm=48, overload_s=8, admission_budget=4)
SOAK = Scale(soak=True, clients=8, max_tokens=48, fault_load_s=30, storm=200, overload_s=60, admission_budget=8)

_SUMMARIES: list[ScenarioSummary] = []


@pytest.fixture(scope="session")
def scale(pytestconfig: pytest.Config) -> Scale:
    return SOAK if pytestconfig.getoption("soak", default=False) else QUICK


@pytest.fixture(scope="session")
def report_scenario() -> Callable[[ScenarioSummary], None]:
    return _SUMMARIES.append


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("soak", default=False):
        return
    skip = pytest.mark.skip(reason="soak only: run with --soak (make soak)")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if not _SUMMARIES:
        return
    terminalreporter.section("fault scenarios (request ledger)")
    terminalreporter.write_line(text_table(_SUMMARIES))
    out = config.getoption("faults_report", default=None)
    if out:
        context = {
            "command": " ".join(["pytest", *config.invocation_params.args]),
            "mode": "soak" if config.getoption("soak", default=False) else "quick",
            "commit": commit(Path(__file__).resolve().parents[2]),
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs, Python {sys.version.split()[0]}",
        }
        write_fault_report(_SUMMARIES, Path(out), context)
        terminalreporter.write_line(f"fault report written to {out}")


@pytest.fixture(scope="module")
def ray_serve() -> Iterator[Callable[..., object]]:
    from tests.integration.conftest import running_serve

    with running_serve() as start:
        yield start
