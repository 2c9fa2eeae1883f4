"""A replica's CPU scheduling policy (serve_app.replica.cpu_policy): SCHED_IDLE on every thread, and
inherited by the processes started after it, as vLLM's engine processes are."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from serve_app.config import load_config
from serve_app.replica.cpu_policy import apply_cpu_scheduling
from serve_app.replica.parts import replica_parts

THREADS_THEN_CHILD = """
import os, subprocess, sys, threading, time
threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
print(len(os.listdir("/proc/self/task")), flush=True)
sys.stdin.readline()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
print(child.pid, flush=True)
sys.stdin.readline()
"""


def test_idle_puts_every_thread_and_later_children_under_sched_idle() -> None:
    command = [sys.executable, "-c", THREADS_THEN_CHILD]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            threads = int(proc.stdout.readline())
            assert threads >= 2
            assert apply_cpu_scheduling("idle", proc.pid) == threads
            tasks = os.listdir(f"/proc/{proc.pid}/task")
            assert all(os.sched_getscheduler(int(t)) == os.SCHED_IDLE for t in tasks)
            proc.stdin.write("\n")
            proc.stdin.flush()
            child = int(proc.stdout.readline())
            assert os.sched_getscheduler(child) == os.SCHED_IDLE
            os.kill(child, 9)
        finally:
            proc.kill()


def test_normal_leaves_the_process_alone_and_an_unknown_policy_fails() -> None:
    assert apply_cpu_scheduling("normal") == 0
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    with pytest.raises(ValueError, match="unknown cpu_scheduling"):
        apply_cpu_scheduling("realtime")


def test_the_replica_gets_its_models_policy() -> None:
    config = load_config({"models": [{"id": "m", "cpu_scheduling": "idle"}, {"id": "n"}]})
    assert [replica_parts(m).cpu_scheduling for m in config.models] == ["idle", "normal"]


TREE = """
import os, subprocess, sys
from serve_app.replica.cpu_policy import apply_cpu_scheduling_to_tree
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
print(apply_cpu_scheduling_to_tree("idle") >= 2, os.sched_getscheduler(0) == os.SCHED_IDLE,
      os.sched_getscheduler(child.pid) == os.SCHED_IDLE, apply_cpu_scheduling_to_tree("normal") == 0)
child.kill()
"""


def test_the_tree_form_sets_the_process_and_those_under_it() -> None:
    done = subprocess.run([sys.executable, "-c", TREE], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.split() == ["True"] * 4, done.stderr
