"""The pre-flight all-reduce for real on CPU: torch.distributed with gloo across spawned processes,
for a healthy group and three broken ones (the diagnosis rules: tests/unit/test_preflight.py)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from serve_app.core.collective_check import CheckResult
from serve_app.engine.preflight import RankLaunch, local_launch_plan, run_local_check
from serve_app.ports import free_port

TIMEOUT_S = 2.0


def _healthy() -> list[RankLaunch]:
    return local_launch_plan(2)


def _wrong_world_size() -> list[RankLaunch]:
    plan = local_launch_plan(2)
    return [plan[0], replace(plan[1], world_size=3)]


def _unreachable_master_port() -> list[RankLaunch]:
    plan = local_launch_plan(2)
    return [plan[0], replace(plan[1], master_port=free_port())]  # nothing listens there


def _rank_never_joins() -> list[RankLaunch]:
    return local_launch_plan(2)[:1]


SCENARIOS: dict[str, Callable[[], list[RankLaunch]]] = {
    "healthy": _healthy,
    "wrong_world_size": _wrong_world_size,
    "unreachable_master_port": _unreachable_master_port,
    "rank_never_joins": _rank_never_joins,
}


@pytest.fixture(scope="module")
def outcomes() -> dict[str, CheckResult]:
    """Run every scenario once, concurrently: each pays a torch import per rank, so running them side
    by side keeps the module well under 30 s on a small machine."""

    def run(name: str) -> CheckResult:
        return run_local_check(SCENARIOS[name](), 2, timeout_s=TIMEOUT_S, start_timeout_s=60)

    with ThreadPoolExecutor(len(SCENARIOS)) as pool:
        return dict(zip(SCENARIOS, pool.map(run, SCENARIOS), strict=True))


def test_healthy_group_all_reduces(outcomes: dict[str, CheckResult]) -> None:
    result = outcomes["healthy"]
    assert result.ok, result.message
    assert [r.value for r in result.reports] == [3.0, 3.0]


@pytest.mark.parametrize(
    ("scenario", "blamed", "phrase"),
    [
        ("wrong_world_size", "rank 1 was started with world_size=3 but the replica has 2 ranks", "rank 0 stopped"),
        ("unreachable_master_port", "rank 1 could not reach the rendezvous", "wrong master address/port"),
        ("rank_never_joins", "rank 1 never reported", "rank 0 stopped, blocked by the rank(s) above"),
    ],
)
def test_broken_group_names_the_rank_and_cause(
    outcomes: dict[str, CheckResult], scenario: str, blamed: str, phrase: str
) -> None:
    result = outcomes[scenario]
    assert not result.ok
    assert blamed in result.message and phrase in result.message, result.message
    assert 1 in result.failed_ranks and 0 in result.failed_ranks
