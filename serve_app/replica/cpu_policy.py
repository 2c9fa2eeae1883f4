"""A replica's CPU scheduling policy (``cpu_scheduling`` in a model's deployment part).

"idle" puts every thread of the replica's process under Linux's SCHED_IDLE before its engine
starts. Threads and processes inherit the policy of the thread that creates them, so the engine's
own processes (vLLM's engine core and workers, started after this) run under it too. A SCHED_IDLE
thread gets a core only when no normal thread wants it, and a normal thread that wakes up takes
the core from it at once; nice 19 still takes a weighted share and waits for its slice to end.

Set once more over the whole tree once the engine runs: glibc caches a thread's policy when it is
first asked for it, a new thread inherits that cache, and libzmq's I/O threads set their policy
from it when they start, so those started in the replica's process came out SCHED_OTHER.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil


def apply_cpu_scheduling(policy: str, pid: int | None = None) -> int:
    """Put every thread of ``pid`` (this process by default) under ``policy``; returns how many
    threads were set (0 for "normal", which leaves the process as Ray started it)."""
    if policy == "normal":
        return 0
    if policy != "idle":
        raise ValueError(f"unknown cpu_scheduling {policy!r}")
    tasks = Path(f"/proc/{pid or os.getpid()}/task")
    count = 0
    for task in tasks.iterdir():
        try:
            os.sched_setscheduler(int(task.name), os.SCHED_IDLE, os.sched_param(0))
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
        count += 1
    return count


def apply_cpu_scheduling_to_tree(policy: str) -> int:
    """``policy`` for every thread of this process and of the processes under it."""
    if policy == "normal":
        return 0
    count = 0
    for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            count += apply_cpu_scheduling(policy, proc.pid)
        except (FileNotFoundError, ProcessLookupError):  # a process that ended meanwhile
            continue
    return count
