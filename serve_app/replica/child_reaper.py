"""Stops a replica's child processes when the replica process dies without stopping them.

vLLM runs its engine core in a child process of the replica (``VLLM::EngineCore``, with its
workers below it) and that process does not watch its parent. A graceful shutdown stops the engine
first (``LLMReplica.__del__``); a replica killed outright (SIGKILL, ``ray.kill``) has its process
group killed by the raylet. When the raylet dies too (``ray stop --force``, a raylet killed),
nothing does either: the engine core is re-parented and keeps running, holding its memory (on a
GPU, the KV cache the replacement replica needs). This covers that way out.

The reaper is a small process of its own, started by the replica before its engine
(``start_child_reaper``). It polls the replica: while it lives, it remembers the replica's
descendants; once the replica is gone, it sends SIGTERM to those still running (vLLM's engine
core stops its workers on it), SIGKILL to any left after ``TERM_GRACE_S``, and exits.
Each process is matched by pid and start time, so a pid reused after a process ended is never
signalled.

    python -m serve_app.replica.child_reaper PARENT_PID
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

POLL_S = 1.0  # how often the replica is looked at: a child started and orphaned within it is missed
TERM_GRACE_S = 10.0  # after SIGTERM, before SIGKILL

Identity = tuple[int, float]  # pid, start time


def start_child_reaper() -> subprocess.Popen[bytes]:
    """The reaper of this process's descendants, in a session of its own (a signal to the
    replica's process group does not reach it), importing from where this process does (a Ray
    runtime_env may have put serve_app on sys.path only)."""
    cmd = [sys.executable, "-m", "serve_app.replica.child_reaper", str(os.getpid())]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=env, start_new_session=True)


def _identity(proc: psutil.Process) -> Identity:
    return proc.pid, proc.create_time()


def _same(identity: Identity) -> psutil.Process | None:
    """The process with this identity if it still runs (not one that reused its pid)."""
    try:
        proc = psutil.Process(identity[0])
        if proc.create_time() == identity[1] and proc.status() != psutil.STATUS_ZOMBIE:
            return proc
    except psutil.Error:
        pass
    return None


def watch(parent: Identity, poll_s: float = POLL_S) -> set[Identity]:
    """Waits for ``parent`` to end; returns its descendants (this process excluded) as last seen."""
    children: set[Identity] = set()
    me = os.getpid()
    while (proc := _same(parent)) is not None:
        try:
            children = {_identity(c) for c in proc.children(recursive=True) if c.pid != me}
        except psutil.Error:
            pass  # it ended while being listed: the loop's test sees it
        time.sleep(poll_s)
    return children


def reap(children: set[Identity], grace_s: float = TERM_GRACE_S) -> list[int]:
    """SIGTERM to each child still running, then SIGKILL after ``grace_s``; the pids signalled."""
    running = [p for p in map(_same, children) if p is not None]
    for proc in running:
        _signal(proc, signal.SIGTERM)
    _, alive = psutil.wait_procs(running, timeout=grace_s)
    for proc in alive:
        _signal(proc, signal.SIGKILL)
    return [p.pid for p in running]


def _signal(proc: psutil.Process, sig: signal.Signals) -> None:
    try:
        proc.send_signal(sig)
    except psutil.Error:
        pass  # it ended on its own


def main(argv: list[str]) -> int:
    try:
        parent = _identity(psutil.Process(int(argv[0])))
    except (IndexError, ValueError, psutil.Error) as err:
        print(f"child_reaper: no parent to watch ({err})", file=sys.stderr)
        return 2
    signalled = reap(watch(parent))
    if signalled:
        print(f"child_reaper: replica {parent[0]} ended; stopped its orphaned processes {signalled}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
