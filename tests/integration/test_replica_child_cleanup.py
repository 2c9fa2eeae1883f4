"""A replica's vLLM engine core is a child process of the replica's Ray worker; when the worker dies
without cleaning up (SIGKILL, a crash), the engine core must not outlive it holding GPU memory.
Ray (2.60) starts each worker in its own process group and the raylet kills that group when the
worker dies. This checks that behaviour of the Ray we ship against, in a Ray of its own."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    import psutil, ray

    @ray.remote
    class Replica:
        def start(self):
            # Like vLLM's engine core: a Python child of the worker, in the worker's process group.
            self.child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            return os.getpid(), self.child.pid

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    worker, child = ray.get(Replica.remote().start.remote())
    os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if psutil.Process(child).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.5)
    else:
        os.kill(child, signal.SIGKILL)
        print("ORPHANED", child, flush=True)
        sys.exit(1)
    print("cleaned up", flush=True)
    """
)


def test_a_killed_replica_worker_takes_its_child_process_with_it() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "cleaned up" in done.stdout
