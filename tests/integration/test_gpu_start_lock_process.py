"""A GPU start lock held by a process that is killed leaves no stale lock
(serve_app.engine.gpu_start_lock; the rest of it is unit-tested in tests/unit/test_gpu_start_lock.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from serve_app.engine.gpu_start_lock import gpu_start_lock


async def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    _lock_in_a_process_then_kill_it(tmp_path / "gpu-0.lock")
    started = time.monotonic()
    async with gpu_start_lock(["0"], owner="next", lock_dir=tmp_path, timeout_s=5):
        pass
    assert time.monotonic() - started < 1


def _lock_in_a_process_then_kill_it(path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait()


_HOLD = """
import fcntl, sys, time
f = open(sys.argv[1], "ab")
fcntl.flock(f.fileno(), fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""
