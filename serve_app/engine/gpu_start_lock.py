"""One engine start at a time per shared GPU.

vLLM sizes its KV cache at start by profiling: it measures the GPU's free memory before and after
loading the model and a dummy forward pass, and counts any drop it cannot attribute to its own
tensors as its own overhead. When several replicas share one GPU (fractional ``num_gpus``) and
start together, each one counts the others' allocations as its own and ends with "No available
memory for the cache blocks"; Serve retries it three times and then marks the deployment failed.
GPU run 4 failed exactly that way (``benchmarks/results/gpu-h200-run4/README.md`` has the figures).

So an engine on a shared GPU takes an exclusive ``flock`` per GPU for its start (load, profile,
KV cache, CUDA graphs); the others wait their turn. The lock is a file per GPU in the node's
temporary directory, which every Ray worker of the node (or of the pod, on Kubernetes) shares;
the kernel releases it when its holder exits, so a crashed start leaves no stale lock. Waiting is
bounded: after ``timeout_s`` the start goes ahead anyway (a hung holder must not hold every other
replica back), with a warning; so does a start whose lock file cannot be made (a read-only temp
directory).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO

logger = logging.getLogger("serve_app.engine")

POLL_S = 0.5
Clock = Callable[[], float]  # monotonic seconds
Sleep = Callable[[float], None]  # blocks the calling (worker) thread


def shared_gpu_ids(num_gpus: float, gpus_per_replica: int, assigned: Sequence[object]) -> list[str]:
    """The GPUs a replica may share with other replicas: only a replica asking for a fraction of
    one GPU shares it (a multi-GPU replica's placement group bundles hold whole GPUs)."""
    if gpus_per_replica > 1 or not 0 < num_gpus < 1:
        return []
    return sorted(str(g) for g in assigned)


def _try_lock(handle: IO[bytes]) -> bool:
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _lock_until(path: Path, deadline: float, owner: str, clock: Clock, sleep: Sleep) -> IO[bytes] | None:
    """The locked file, or None when ``deadline`` passed first."""
    handle = path.open("ab")
    announced = False
    while not _try_lock(handle):
        if clock() >= deadline:
            handle.close()
            return None
        if not announced:
            logger.info("%s: waiting for %s (another engine is starting on that GPU)", owner, path)
            announced = True
        sleep(POLL_S)
    return handle


def _acquire(paths: list[Path], timeout_s: float, owner: str, clock: Clock, sleep: Sleep) -> list[IO[bytes]]:
    """Lock every path in order (sorted ids: two replicas never wait on each other crosswise)."""
    held: list[IO[bytes]] = []
    deadline = clock() + timeout_s
    try:
        for path in paths:
            handle = _lock_until(path, deadline, owner, clock, sleep)
            if handle is None:
                logger.warning("%s: %s still held after %.0f s; starting the engine anyway", owner, path, timeout_s)
            else:
                held.append(handle)
    except OSError:
        _release(held)
        raise
    return held


def _release(held: list[IO[bytes]]) -> None:
    for handle in reversed(held):
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()


@asynccontextmanager
async def gpu_start_lock(
    gpu_ids: Sequence[str],
    owner: str,
    timeout_s: float = 1800.0,
    lock_dir: Path | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
) -> AsyncIterator[None]:
    """Hold every GPU's start lock for the body; no-op without GPU ids."""
    if not gpu_ids:
        yield
        return
    folder = lock_dir or Path(tempfile.gettempdir()) / "serve-app-gpu-start"
    paths = [folder / f"gpu-{gpu}.lock" for gpu in sorted(gpu_ids)]
    started = clock()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        held = await asyncio.to_thread(_acquire, paths, timeout_s, owner, clock, sleep)
    except OSError as err:  # e.g. a read-only temp dir: the lock is a precaution, not a precondition
        logger.warning("%s: no GPU start lock (%s); starting the engine without it", owner, err)
        held = []
    waited = clock() - started
    if waited > 1:
        logger.info("%s: waited %.1f s for GPU(s) %s", owner, waited, ",".join(gpu_ids))
    try:
        yield
    finally:
        _release(held)
