"""Pre-flight check of a multi-GPU replica: a small all-reduce across its ranks, with a timeout,
before the replica takes traffic. A failure names the rank(s) and the likely cause
(see serve_app.core.collective_check.diagnose).

Two ways to run it:

* inside vLLM's workers: :class:`PreflightWorkerExtension` is passed as the engine argument
  ``worker_extension_cls``; :func:`check_engine_workers` calls its method on every rank through
  the engine's ``collective_rpc`` and diagnoses the answers.
* as local processes: :func:`run_local_check` spawns one process per rank doing
  ``torch.distributed`` init + all-reduce (gloo on CPU, nccl on GPUs). It checks a node's GPUs or
  network settings before an engine starts, and it is how the check is tested on CPU.

torch is imported only inside the functions that run in a rank, never at module import.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from serve_app.core.collective_check import PROCESS_EXITED, CheckResult, RankReport, diagnose
from serve_app.errors import ServeAppError
from serve_app.ports import free_port

PREFLIGHT_RPC_METHOD = "serve_app_preflight_all_reduce"
WORKER_EXTENSION = "serve_app.engine.preflight.PreflightWorkerExtension"
# Extra time allowed for collective_rpc itself beyond the in-worker timeout (queueing, pickling).
_RPC_MARGIN_S = 30.0
_REPORT_SLACK_S = 10.0
# What a rank was doing when it stopped, by the last stage it reported.
_NEXT_STEP = {"started": "rendezvous", "registered": "connect", "joined": "all_reduce"}


class PreflightError(ServeAppError, RuntimeError):
    """The replica's ranks cannot all-reduce; the message names the rank(s) and the likely cause."""


@dataclass(frozen=True)
class RankLaunch:
    """How one local rank process is started (each rank can be given its own, to check a plan)."""

    rank: int
    world_size: int
    master_addr: str
    master_port: int


def local_launch_plan(
    world_size: int, master_addr: str = "127.0.0.1", master_port: int | None = None
) -> list[RankLaunch]:
    port = master_port or free_port(master_addr)
    return [RankLaunch(r, world_size, master_addr, port) for r in range(world_size)]


def _all_reduce_with_timeout(rank: int, device: Any, timeout_s: float) -> tuple[float | None, str]:
    """All-reduce ``rank + 1`` over the default process group in a helper thread, so a collective that
    never completes (a missing peer, a blocked NCCL transport) cannot hang the caller."""
    import torch
    import torch.distributed as dist

    outcome: dict[str, Any] = {}

    def reduce() -> None:
        try:
            tensor = torch.tensor([float(rank + 1)], device=device)
            dist.all_reduce(tensor)
            outcome["value"] = float(tensor.item())  # .item() waits for the device
        except Exception as err:  # reported to the caller, not raised in a thread
            outcome["error"] = f"{type(err).__name__}: {err}"

    thread = threading.Thread(target=reduce, name="serve-app-preflight", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        return None, f"all-reduce did not complete in {timeout_s:g} s (timeout)"
    return outcome.get("value"), outcome.get("error", "")


def _device_for_backend(backend: str, local_rank: int) -> Any:
    import torch

    if "nccl" in backend:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _attempt(action: Callable[[], Any]) -> tuple[Any, str]:
    try:
        return action(), ""
    except Exception as err:  # the rank reports it; the parent diagnoses the group
        return None, f"{type(err).__name__}: {err}"


def _rank_main(launch: RankLaunch, backend: str, timeout_s: float, reports: Any, go: Any) -> None:
    """Entry point of one local rank process; every outcome goes to ``reports`` as a dict. The rank
    waits for ``go`` after its (slow) torch import, so the timeouts measure only the collective.
    Stages: reach the rendezvous store, then connect the process group to the peers, then reduce."""
    import torch.distributed as dist

    host, started = socket.gethostname(), time.monotonic()

    def report(stage: str, **fields: Any) -> None:
        fields.setdefault("elapsed_s", time.monotonic() - started)
        reports.put(RankReport(launch.rank, stage, host, launch.world_size, **fields).to_dict())  # type: ignore[arg-type]

    report("started")
    go.wait()
    started, timeout = time.monotonic(), timedelta(seconds=timeout_s)
    addr, port, size, rank = launch.master_addr, launch.master_port, launch.world_size, launch.rank
    store, error = _attempt(lambda: dist.TCPStore(addr, port, size, rank == 0, timeout))
    if error:
        return report("failed", failed_at="rendezvous", error=error)
    report("registered")
    _, error = _attempt(
        lambda: dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=timeout)
    )
    if error:
        return report("failed", failed_at="connect", error=error)
    report("joined")
    value, error = _all_reduce_with_timeout(rank, _device_for_backend(backend, rank), timeout_s)
    if error:
        return report("failed", failed_at="all_reduce", error=error)
    report("done", value=value)
    dist.destroy_process_group()
    return None


def _drain(reports: Any, latest: dict[int, RankReport], wait_s: float) -> None:
    try:
        rep = RankReport.from_dict(reports.get(timeout=wait_s))
    except queue.Empty:
        return
    latest[rep.rank] = rep
    while True:
        try:
            rep = RankReport.from_dict(reports.get_nowait())
        except queue.Empty:
            return
        latest[rep.rank] = rep


def _collect(
    procs: dict[int, Any],
    reports: Any,
    go: Any,
    latest: dict[int, RankReport],
    timeout_s: float,
    start_timeout_s: float,
) -> None:
    """Gather each rank's latest report into ``latest`` until every launched rank has finished, died
    or the deadline passed. Ranks are released (``go``) together once all have started, or when the
    start deadline passes, so the ranks that did start still try (and name the one that did not)."""
    start_deadline = time.monotonic() + start_timeout_s
    deadline: float | None = None
    while deadline is None or time.monotonic() < deadline:
        _drain(reports, latest, 0.1)
        if deadline is None and (all(r in latest for r in procs) or time.monotonic() > start_deadline):
            go.set()
            # Rendezvous and all-reduce have timeout_s each; the slack covers reporting a failure, which
            # can take seconds on a busy host (torch symbolizes a C++ backtrace into each error).
            deadline = time.monotonic() + 2 * timeout_s + _REPORT_SLACK_S
        unfinished = [r for r in procs if r not in latest or latest[r].stage not in ("done", "failed")]
        if not unfinished:
            return
        if all(not procs[r].is_alive() for r in unfinished):
            _drain(reports, latest, 0.2)  # a dying rank's last report may still be in flight
            return


def _finalize(procs: dict[int, Any], latest: dict[int, RankReport]) -> dict[int, RankReport]:
    """Stop leftover rank processes; mark ranks still waiting as timed out and dead ones as failed."""
    final = dict(latest)
    for rank, proc in procs.items():
        rep = final.get(rank)
        if proc.is_alive():
            proc.terminate()
            proc.join(2)
            if proc.is_alive():
                proc.kill()
                proc.join(2)
            if rep is not None and rep.stage in ("started", "joined"):
                final[rank] = RankReport(**{**rep.to_dict(), "timed_out": True})
            continue
        proc.join(1)  # reap it
        if proc.exitcode not in (0, None) and (rep is None or rep.stage not in ("done", "failed")):
            stage = _NEXT_STEP[rep.stage if rep else "started"]
            final[rank] = RankReport(
                rank, "failed", rep.host if rep else "", rep.world_size if rep else None, stage,
                error=f"{PROCESS_EXITED} {proc.exitcode} before finishing",
            )  # fmt: skip
    return final


def run_local_check(
    launches: Sequence[RankLaunch],
    world_size: int,
    *,
    backend: str = "gloo",
    timeout_s: float = 30.0,
    start_timeout_s: float = 120.0,
) -> CheckResult:
    """Spawn one process per launch, all-reduce across them and diagnose the group of ``world_size``.

    ``launches`` normally comes from :func:`local_launch_plan`; a rank missing from it, or with its own
    world size or master port, is diagnosed like a rank that never joined or was misconfigured."""
    ctx = multiprocessing.get_context("spawn")  # fork would copy this process's threads and locks
    reports, go = ctx.Queue(), ctx.Event()
    procs = {
        launch.rank: ctx.Process(
            target=_rank_main, args=(launch, backend, timeout_s, reports, go), name=f"preflight-rank-{launch.rank}"
        )
        for launch in launches
    }
    for proc in procs.values():
        proc.start()
    latest: dict[int, RankReport] = {}
    try:
        _collect(procs, reports, go, latest, timeout_s, start_timeout_s)
    finally:
        final = _finalize(procs, latest)
    rendezvous = f"{launches[0].master_addr}:{launches[0].master_port}" if launches else "none"
    return diagnose(world_size, final, timeout_s, rendezvous)


class PreflightWorkerExtension:
    """Mixed into vLLM's worker class (engine argument ``worker_extension_cls=WORKER_EXTENSION``), so
    its method runs in every rank's worker process when called through ``collective_rpc``."""

    def serve_app_preflight_all_reduce(self, timeout_s: float) -> dict[str, Any]:
        import torch
        import torch.distributed as dist

        started = time.monotonic()
        rank, world_size = dist.get_rank(), dist.get_world_size()
        # vLLM's default group is NCCL on GPUs (the path inference uses) and gloo on CPU hosts.
        on_gpu = "nccl" in str(dist.get_backend())
        device = getattr(self, "device", None) if on_gpu else torch.device("cpu")
        value, error = _all_reduce_with_timeout(rank, device, timeout_s)
        return RankReport(
            rank, "failed" if error else "done", socket.gethostname(), world_size,
            failed_at="all_reduce" if error else "", error=error, value=value,
            elapsed_s=time.monotonic() - started,
        ).to_dict()  # fmt: skip


CollectiveRpc = Callable[..., Awaitable[list[Any]]]


async def check_engine_workers(collective_rpc: CollectiveRpc, world_size: int, timeout_s: float) -> CheckResult:
    """Run the all-reduce in every worker of a started engine. ``collective_rpc`` is the engine's
    (``AsyncLLM.collective_rpc``): ``(method, timeout=..., args=...) -> one answer per rank``."""
    limit = timeout_s + _RPC_MARGIN_S
    try:
        answers = await asyncio.wait_for(
            collective_rpc(PREFLIGHT_RPC_METHOD, timeout=limit, args=(timeout_s,)), limit + _RPC_MARGIN_S
        )
    except Exception as err:
        reason = f"{type(err).__name__}: {err}" if str(err) else f"no answer in {limit + _RPC_MARGIN_S:g} s"
        return CheckResult(
            False,
            world_size,
            f"collective check got no per-rank answer from the engine's workers ({reason}): likely cause: a "
            "worker process died or is blocked outside the check; the worker logs name its rank",
        )
    reports = {rep.rank: rep for rep in (RankReport.from_dict(a) for a in answers)}
    return diagnose(world_size, reports, timeout_s, "the engine's process group")


async def ensure_engine_workers_ready(collective_rpc: CollectiveRpc, world_size: int, timeout_s: float) -> CheckResult:
    """:func:`check_engine_workers`, raising :class:`PreflightError` (with its message) on failure."""
    result = await check_engine_workers(collective_rpc, world_size, timeout_s)
    if not result.ok:
        raise PreflightError(result.message)
    return result
