"""A replica's vLLM engine core is a child process of the replica's Ray worker; when the worker dies
without cleaning up (SIGKILL, a crash), the engine core must not outlive it holding GPU memory.

* Ray (2.60) starts each worker in its own process group and the raylet kills that group when the
  worker dies: checked against the Ray we ship, in a Ray of its own.
* When the raylet dies too (``ray stop --force``, a raylet killed), nothing of Ray's is left to do
  that: the replica's child reaper (``serve_app.replica.child_reaper``, started by every vLLM
  replica) stops the orphans. Checked with the reaper and, as the control, without it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from serve_app.replica import child_reaper

SCRIPT = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    import psutil, ray
    from serve_app.replica.child_reaper import start_child_reaper

    kill_raylet, with_reaper = sys.argv[1] == "raylet", sys.argv[2] == "reaper"

    @ray.remote
    class Replica:
        def start(self):
            self.reaper = start_child_reaper() if with_reaper else None
            # Like vLLM's engine core: a Python child of the worker, in the worker's process group.
            self.child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            time.sleep(2.5)  # the reaper has seen it (it looks every second)
            return os.getpid(), os.getppid(), self.child.pid

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    worker, raylet, child = ray.get(Replica.remote().start.remote())
    if kill_raylet:  # as `ray stop --force` does: the raylet first, then the worker
        os.kill(raylet, signal.SIGKILL)
    os.kill(worker, signal.SIGKILL)
    deadline, orphaned = time.monotonic() + float(sys.argv[3]), False
    while time.monotonic() < deadline:
        try:
            if psutil.Process(child).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.5)
    else:
        os.kill(child, signal.SIGKILL)
        orphaned = True
        print("ORPHANED", child, flush=True)
    # The raylet may be gone: no shutdown handshake, this Ray's processes killed outright.
    ray._private.worker._global_node.kill_all_processes(check_alive=False, allow_graceful=False)
    print("" if orphaned else "cleaned up", flush=True)
    os._exit(0)
    """
)
# The reaper's poll, its SIGTERM grace before SIGKILL, and slack for 2 busy cores.
REAPED_WITHIN_S = child_reaper.POLL_S + child_reaper.TERM_GRACE_S + 10


def _run(kill: str, reaper: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-c", SCRIPT, kill, reaper, str(REAPED_WITHIN_S)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    subprocess.run(["pkill", "-9", "-f", "sleep\\(600\\)"], check=False)  # never leave one behind
    return done


def test_a_killed_replica_worker_takes_its_child_process_with_it() -> None:
    done = _run("worker", "none")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "cleaned up" in done.stdout and "ORPHANED" not in done.stdout


@pytest.mark.parametrize(("reaper", "orphaned"), [("reaper", False), ("none", True)])
def test_with_the_raylet_killed_too_only_the_reaper_stops_the_child(reaper: str, orphaned: bool) -> None:
    done = _run("raylet", reaper)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert ("ORPHANED" in done.stdout) is orphaned, done.stdout[-2000:] + done.stderr[-2000:]
