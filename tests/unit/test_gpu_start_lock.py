"""Engine starts on a shared GPU run one at a time (serve_app.engine.gpu_start_lock)."""

from __future__ import annotations

import asyncio
import fcntl
import logging
from pathlib import Path

import pytest

from serve_app.engine import gpu_start_lock as lock_module
from serve_app.engine.gpu_start_lock import gpu_start_lock, shared_gpu_ids


@pytest.fixture(autouse=True)
def fast_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lock_module, "POLL_S", 0.01)


@pytest.mark.parametrize(
    ("num_gpus", "gpus_per_replica", "assigned", "expected"),
    [
        (0.3, 1, [3], ["3"]),  # a fraction of GPU 3: shared
        (0.5, 1, ["1", "0"], ["0", "1"]),
        (1.0, 1, [0], []),  # a whole GPU is the replica's own
        (0.0, 1, [], []),  # CPU
        (0.0, 4, [0, 1, 2, 3], []),  # TP=4: placement group bundles hold whole GPUs
    ],
)
def test_only_a_fraction_of_a_gpu_is_shared(
    num_gpus: float, gpus_per_replica: int, assigned: list, expected: list[str]
) -> None:
    assert shared_gpu_ids(num_gpus, gpus_per_replica, assigned) == expected


class FakeClock:
    """Monotonic seconds that move only when the lock's poll "sleeps" (in its worker thread)."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _held_elsewhere(path: Path) -> bool:
    """Whether another open file holds ``path``'s flock (a new open conflicts even in this process)."""
    with path.open("ab") as probe:
        try:
            fcntl.flock(probe.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(probe.fileno(), fcntl.LOCK_UN)
        return False


async def _start(tmp_path: Path, log: list[tuple[str, str]], name: str) -> None:
    async with gpu_start_lock(["0"], owner=name, lock_dir=tmp_path):
        log.append((name, "in"))
        assert _held_elsewhere(tmp_path / "gpu-0.lock")
        # Real time, not a fake clock: the other starts poll an OS file lock from worker threads,
        # and only a hold of a few poll intervals gives them the chance to barge in.
        await asyncio.sleep(5 * lock_module.POLL_S)
        log.append((name, "out"))


@pytest.mark.real_time  # asyncio.to_thread: the virtual-time loop would not wait for the threads
async def test_starts_on_one_gpu_do_not_overlap(tmp_path: Path) -> None:
    log: list[tuple[str, str]] = []
    await asyncio.gather(*(_start(tmp_path, log, f"engine-{i}") for i in range(3)))
    # in/out pairs never interleave: each start runs alone
    assert len(log) == 6
    for i in range(0, len(log), 2):
        assert log[i][1] == "in" and log[i + 1] == (log[i][0], "out")


@pytest.mark.real_time
async def test_starts_on_different_gpus_overlap(tmp_path: Path) -> None:
    inside = {"a": asyncio.Event(), "b": asyncio.Event()}

    async def start(gpu: str, me: str, other: str) -> None:
        async with gpu_start_lock([gpu], owner=me, lock_dir=tmp_path):
            inside[me].set()
            await inside[other].wait()  # both inside at once: hangs (and times out) if they were serialised

    await asyncio.wait_for(asyncio.gather(start("0", "a", "b"), start("1", "b", "a")), timeout=5)


async def test_no_gpu_takes_no_lock(tmp_path: Path) -> None:
    async with gpu_start_lock([], owner="cpu", lock_dir=tmp_path):
        pass
    assert not _files(tmp_path)


@pytest.mark.real_time
async def test_a_failed_start_releases_the_lock(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(RuntimeError):
        async with gpu_start_lock(["0"], owner="a", lock_dir=tmp_path):
            raise RuntimeError("engine core initialization failed")
    assert not _held_elsewhere(tmp_path / "gpu-0.lock")
    clock = FakeClock()
    with caplog.at_level(logging.INFO, logger="serve_app.engine"):
        async with gpu_start_lock(["0"], owner="b", lock_dir=tmp_path, timeout_s=5, clock=clock, sleep=clock.sleep):
            assert _held_elsewhere(tmp_path / "gpu-0.lock")
    assert clock.now == 1_000.0 and "waiting for" not in caplog.text, "taken at once, without a poll"


@pytest.mark.real_time
async def test_a_hung_holder_does_not_block_forever(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "gpu-0.lock").touch()
    clock = FakeClock()
    with (tmp_path / "gpu-0.lock").open("ab") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with caplog.at_level(logging.INFO, logger="serve_app.engine"):
            async with gpu_start_lock(
                ["0"], owner="late", lock_dir=tmp_path, timeout_s=60, clock=clock, sleep=clock.sleep
            ):
                pass
    assert "waiting for" in caplog.text and "starting the engine anyway" in caplog.text
    assert clock.now >= 1_060.0, "gave up at the timeout on its clock, after polling"


async def test_a_lock_that_cannot_be_made_does_not_stop_the_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    entered = False
    with caplog.at_level(logging.WARNING, logger="serve_app.engine"):
        async with gpu_start_lock(["0"], owner="ro", lock_dir=not_a_folder / "locks"):
            entered = True
    assert entered and "starting the engine without it" in caplog.text


def _files(folder: Path) -> list[Path]:
    return list(folder.iterdir())
