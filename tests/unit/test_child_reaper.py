"""serve_app.replica.child_reaper with real processes: a stand-in replica (a Python process that starts
the reaper, then a long ``sleep`` as its engine) is killed outright; its orphaned child must stop.
With Ray (the raylet and the worker both SIGKILLed): tests/integration/test_replica_child_cleanup.py;
with vLLM under `make serve`: benchmarks/faults/forced_stop.sh."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from serve_app.replica import child_reaper

# The stand-in replica: its reaper, then a child that would run for minutes; prints both pids.
REPLICA = """
import subprocess, sys, time
from serve_app.replica.child_reaper import start_child_reaper
reaper = start_child_reaper()
engine = subprocess.Popen(["sleep", "300"])
print(reaper.pid, engine.pid, flush=True)
if sys.argv[1] == "exit":  # a graceful stop: the engine stopped first
    engine.terminate(); engine.wait(); sys.exit(0)
time.sleep(300)
"""


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _running(pid):
            return True
        time.sleep(0.1)
    return False


def _start_replica(mode: str, stderr: int | None = None) -> tuple[subprocess.Popen[str], int, int]:
    replica = subprocess.Popen([sys.executable, "-c", REPLICA, mode], stdout=subprocess.PIPE, stderr=stderr, text=True)
    assert replica.stdout is not None
    reaper_pid, engine_pid = map(int, replica.stdout.readline().split())
    replica.stdout.close()
    return replica, reaper_pid, engine_pid


def test_a_killed_replicas_orphaned_child_is_stopped_and_the_reaper_exits() -> None:
    replica, reaper_pid, engine_pid = _start_replica("kill")
    try:
        time.sleep(2 * child_reaper.POLL_S + 0.5)  # the reaper has seen the engine
        assert _running(engine_pid)
        replica.send_signal(signal.SIGKILL)
        replica.wait()
        assert _wait_gone(engine_pid, timeout_s=child_reaper.POLL_S + 5), "the orphaned engine still runs"
        assert _wait_gone(reaper_pid, timeout_s=5), "the reaper did not exit"
    finally:
        for pid in (engine_pid, reaper_pid):
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def test_after_a_graceful_stop_the_reaper_exits_without_signalling() -> None:
    replica, reaper_pid, engine_pid = _start_replica("exit", stderr=subprocess.PIPE)
    assert replica.wait(timeout=30) == 0
    assert _wait_gone(reaper_pid, timeout_s=child_reaper.POLL_S + 5)
    assert not _running(engine_pid)
    assert replica.stderr is not None
    with replica.stderr:  # the reaper writes here too; it has exited, so this ends
        assert "stopped its orphaned processes" not in replica.stderr.read()


def test_a_pid_whose_start_time_differs_is_never_signalled() -> None:
    with subprocess.Popen(["sleep", "30"]) as other:
        stranger = psutil.Process(other.pid)
        assert child_reaper.reap({(other.pid, stranger.create_time() - 1)}, grace_s=0.1) == []
        assert stranger.is_running()
        assert child_reaper.reap({(other.pid, stranger.create_time())}, grace_s=5) == [other.pid]
        assert not _running(other.pid)  # reap waited for it: its status went there, not to ``other``


def test_without_a_parent_to_watch_it_says_so() -> None:
    assert child_reaper.main([]) == 2
    assert child_reaper.main(["not-a-pid"]) == 2
