"""Diagnosis of a collective (all-reduce) check across the ranks of one multi-GPU replica.

Each rank reports how far it got (started -> joined the process group -> finished the all-reduce)
and what it saw; :func:`diagnose` turns those reports into one verdict whose message names the
ranks at fault and the likely cause. Pure: the processes that produce the reports live in
serve_app.engine.preflight.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

# started -> registered (reached the rendezvous store) -> joined (process group connected to its
# peers) -> done (all-reduce finished); or failed, with failed_at naming the step.
Stage = Literal["started", "registered", "joined", "done", "failed"]
# Substrings of torch/gloo/NCCL errors that mean "could not connect to the rendezvous or a peer".
# How serve_app.engine.preflight reports a rank process that died without saying why.
PROCESS_EXITED = "process exited with code"
_CONNECT_ERRORS = ("connection refused", "connect", "unreachable", "no route", "name or service not known")


@dataclass(frozen=True)
class RankReport:
    rank: int
    stage: Stage  # the furthest stage reached
    host: str = ""
    world_size: int | None = None  # the group size this rank was started with
    failed_at: str = ""  # "rendezvous", "connect" or "all_reduce" when stage == "failed"
    timed_out: bool = False  # still waiting when the check's deadline passed
    error: str = ""
    value: float | None = None  # the all-reduce result
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RankReport:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    world_size: int
    message: str
    failed_ranks: tuple[int, ...] = ()
    reports: tuple[RankReport, ...] = ()


def expected_sum(world_size: int) -> float:
    """Rank r contributes r + 1, so a correct sum also proves every rank's data arrived."""
    return world_size * (world_size + 1) / 2


def _ranks(ranks: list[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(str(r) for r in sorted(ranks))


def _first_line(text: str, limit: int = 200) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:limit]


Finding = tuple[list[int], str]


def _is_connect_error(rep: RankReport) -> bool:
    return any(s in rep.error.lower() for s in _CONNECT_ERRORS)


def _is_timeout(rep: RankReport) -> bool:
    text = rep.error.lower()
    return rep.timed_out or "timeout" in text or "timed out" in text


def _root_causes(world_size: int, reports: Mapping[int, RankReport], rendezvous: str) -> list[Finding]:
    """Ranks that are themselves at fault: misconfigured, unable to connect, crashed or absent."""
    found: list[Finding] = []
    for r in sorted(reports):
        rep = reports[r]
        error = _first_line(rep.error)
        if not 0 <= r < world_size:
            found.append(([r], f"is outside the group of {world_size} ranks: likely cause: a rank numbering mismatch"))
        elif rep.world_size is not None and rep.world_size != world_size:
            found.append(
                (
                    [r],
                    f"was started with world_size={rep.world_size} but the replica has {world_size} ranks: likely "
                    "cause: a worker launched for a different tensor/pipeline parallel setting (stale or foreign)",
                )
            )
        elif rep.failed_at == "rendezvous" and _is_connect_error(rep):
            found.append(
                (
                    [r],
                    f"could not reach the rendezvous at {rendezvous} ({error}): likely cause: a wrong master "
                    "address/port, or a firewall/security group blocking it between nodes",
                )
            )
        elif (rep.failed_at == "rendezvous" and not _is_timeout(rep)) or rep.error.startswith(PROCESS_EXITED):
            # An all-reduce error is not listed here: it is what a rank sees when a peer goes away.
            found.append(([r], f"failed during {rep.failed_at or 'the check'} ({error})"))
    missing = [r for r in range(world_size) if r not in reports]
    if missing:
        found.append(
            (
                missing,
                "never reported: its worker process did not start or died before the rendezvous (is its node up?)",
            )
        )
    return found


def _stuck_at(rep: RankReport) -> str:
    if rep.stage == "failed":
        return rep.failed_at
    return {"started": "rendezvous", "registered": "connect", "joined": "all_reduce"}.get(rep.stage, "")


_STALL_CAUSES = {
    "rendezvous": "timed out at the rendezvous: likely cause: the ranks were given different rendezvous "
    "addresses, or the master's port is blocked",
    "connect": "reached the rendezvous but could not connect to its peers: likely cause: a firewall between "
    "nodes, or GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME naming an interface the peers cannot reach",
}


def _stalls(reports: Mapping[int, RankReport], blamed: set[int], timeout_s: float) -> list[Finding]:
    """Ranks left waiting. With a root cause they are its victims; without one, guess from where they wait."""
    by_step: dict[str, list[int]] = {}
    for r in sorted(reports):
        step = _stuck_at(reports[r])
        if r not in blamed and step:
            by_step.setdefault(step, []).append(r)
    if blamed:
        stuck = sorted(r for ranks in by_step.values() for r in ranks)
        return [(stuck, "stopped, blocked by the rank(s) above (timed out waiting or cut off)")] if stuck else []
    found: list[Finding] = [(by_step[step], cause) for step, cause in _STALL_CAUSES.items() if step in by_step]
    reducing = by_step.get("all_reduce", [])
    if reducing:
        hosts = sorted({reports[r].host for r in reducing if reports[r].host})
        cause = (
            f"across hosts {', '.join(hosts)}: likely cause: inter-node networking (NCCL_SOCKET_IFNAME / "
            "NCCL_IB_HCA on the wrong interface, or a firewall between nodes)"
            if len(hosts) > 1
            else "on one host: likely cause: the GPU peer-to-peer transport (try NCCL_P2P_LEVEL or NCCL_P2P_DISABLE=1)"
        )
        errors = sorted({_first_line(reports[r].error, 120) for r in reducing if reports[r].error})
        seen = f" ({'; '.join(errors)})" if errors else ""
        found.append((reducing, f"joined but the all-reduce did not complete in {timeout_s:g} s{seen} {cause}"))
    return found


def _wrong_values(world_size: int, reports: Mapping[int, RankReport]) -> list[tuple[list[int], str]]:
    want = expected_sum(world_size)
    bad = [r for r, rep in reports.items() if rep.stage == "done" and rep.value != want]
    if not bad:
        return []
    got = sorted({reports[r].value for r in bad}, key=str)
    return [
        (
            bad,
            f"computed a wrong sum {got} (expected {want:g}): likely cause: corrupted peer-to-peer "
            "transfers; confirm with NCCL_P2P_DISABLE=1",
        )
    ]


def diagnose(world_size: int, reports: Mapping[int, RankReport], timeout_s: float, rendezvous: str) -> CheckResult:
    """One verdict for the group: ranks at fault first (misconfigured, unreachable rendezvous, crashed,
    absent), then the ranks left waiting for them, then wrong all-reduce results."""
    roots = _root_causes(world_size, reports, rendezvous)
    blamed = {r for ranks, _ in roots for r in ranks}
    findings = roots + _stalls(reports, blamed, timeout_s) + _wrong_values(world_size, reports)
    ordered = tuple(reports[r] for r in sorted(reports))
    if not findings:
        done = [rep for rep in ordered if rep.stage == "done"]
        if len(done) == world_size:
            hosts = len({rep.host for rep in done})
            slowest = max(rep.elapsed_s for rep in done)
            message = f"all-reduce across {world_size} ranks on {hosts} host(s) in {slowest:.2f} s"
            return CheckResult(True, world_size, message, reports=ordered)
        other = [rep.rank for rep in ordered if rep.stage != "done"]
        findings = [(other, "did not finish (no error reported)")]
    failed = tuple(sorted({r for ranks, _ in findings for r in ranks}))
    detail = "; ".join(f"{_ranks(ranks)} {text}" for ranks, text in findings)
    message = f"collective check failed for a group of {world_size} ranks (rendezvous {rendezvous}): {detail}"
    return CheckResult(False, world_size, message, failed, ordered)
