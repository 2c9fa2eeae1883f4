"""The pre-flight all-reduce check: diagnosis rules and the engine's collective_rpc path, in
milliseconds (the real thing across spawned processes: tests/integration/test_preflight_processes.py)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from serve_app.core.collective_check import RankReport, diagnose, expected_sum
from serve_app.engine.preflight import (
    PREFLIGHT_RPC_METHOD,
    PreflightError,
    check_engine_workers,
    ensure_engine_workers_ready,
)

# --- diagnosis (pure) ---------------------------------------------------------------------------


def done(rank: int, host: str = "node-a", world: int = 2) -> RankReport:
    return RankReport(rank, "done", host, world, value=expected_sum(world), elapsed_s=0.01)


def test_healthy_group_is_ok() -> None:
    result = diagnose(2, {0: done(0), 1: done(1)}, 5.0, "h:1")
    assert result.ok and "2 ranks on 1 host" in result.message


def test_stall_across_hosts_points_at_inter_node_network() -> None:
    reports = {
        0: RankReport(0, "failed", "node-a", 2, "all_reduce", error="all-reduce did not complete in 5 s (timeout)"),
        1: RankReport(1, "joined", "node-b", 2, timed_out=True),
    }
    result = diagnose(2, reports, 5.0, "node-a:29500")
    assert not result.ok and result.failed_ranks == (0, 1)
    assert "across hosts node-a, node-b" in result.message and "NCCL_SOCKET_IFNAME" in result.message


def test_stall_on_one_host_points_at_peer_to_peer() -> None:
    reports = {0: RankReport(0, "joined", "n", 2, timed_out=True), 1: RankReport(1, "joined", "n", 2, timed_out=True)}
    assert "NCCL_P2P_DISABLE" in diagnose(2, reports, 5.0, "n:1").message


def test_peers_unreachable_after_rendezvous_points_at_firewall_or_interface() -> None:
    error = "RuntimeError: Gloo connectFullMesh failed with ... Connect timeout"
    reports = {r: RankReport(r, "failed", f"node-{r}", 2, "connect", error=error) for r in (0, 1)}
    result = diagnose(2, reports, 5.0, "node-0:29500")
    assert result.failed_ranks == (0, 1) and "could not connect to its peers" in result.message
    assert "GLOO_SOCKET_IFNAME" in result.message


def test_wrong_sum_is_reported_per_rank() -> None:
    result = diagnose(2, {0: done(0), 1: replace(done(1), value=2.0)}, 5.0, "n:1")
    assert not result.ok and result.failed_ranks == (1,) and "wrong sum" in result.message


def test_victims_are_not_blamed_for_a_missing_rank() -> None:
    waiting = RankReport(0, "failed", "n", 3, "rendezvous", error="DistStoreError: wait timeout after 5000ms")
    result = diagnose(3, {0: waiting, 1: RankReport(1, "started", "n", 3, timed_out=True)}, 5.0, "n:1")
    assert result.message.index("rank 2 never reported") < result.message.index("ranks 0, 1 stopped")
    assert "blocked by the rank(s) above" in result.message


# --- through an engine's collective_rpc -----------------------------------------------------------


async def test_engine_check_turns_worker_answers_into_a_verdict() -> None:
    calls: list[tuple[Any, ...]] = []

    # The shape of AsyncLLM.collective_rpc(method, timeout=..., args=...).
    async def collective_rpc(method: str, **kwargs: Any) -> list[dict[str, Any]]:
        calls.append((method, kwargs["timeout"], kwargs["args"]))
        stalled = RankReport(1, "failed", "n", 2, "all_reduce", error="all-reduce did not complete in 2 s (timeout)")
        return [done(0, "n").to_dict(), stalled.to_dict()]

    result = await check_engine_workers(collective_rpc, 2, 2.0)
    assert calls == [(PREFLIGHT_RPC_METHOD, 32.0, (2.0,))]
    assert not result.ok and result.failed_ranks == (1,)
    with pytest.raises(PreflightError, match="rank 1 joined but the all-reduce did not complete"):
        await ensure_engine_workers_ready(collective_rpc, 2, 2.0)


async def test_engine_check_without_answers_says_so() -> None:
    async def dead_worker_rpc(method: str, **kwargs: Any) -> list[dict[str, Any]]:
        await asyncio.sleep(0)
        raise RuntimeError("worker 3 died")

    result = await check_engine_workers(dead_worker_rpc, 4, 1.0)
    assert not result.ok and "no per-rank answer" in result.message and "worker 3 died" in result.message
