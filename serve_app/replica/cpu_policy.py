"""A replica's CPU scheduling policy (``cpu_scheduling`` in a model's deployment part).

"idle" puts every thread of the replica's process under Linux's SCHED_IDLE before its engine
starts. Threads and processes inherit the policy of the thread that creates them, so the engine's
own processes (vLLM's engine core and workers, started after this) run under it too. A SCHED_IDLE
thread gets a core only when no normal thread wants it, and a normal thread that wakes up takes
the core from it at once; nice 19 still takes a weighted share and waits for its slice to end.
"""

from __future__ import annotations

import os
from pathlib import Path


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
