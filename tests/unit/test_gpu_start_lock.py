"""Engine starts on a shared GPU run one at a time (serve_app.engine.gpu_start_lock)."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import time
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


async def _start(tmp_path: Path, gpus: list[str], hold_s: float, log: list[tuple[str, str, float]], name: str) -> None:
    async with gpu_start_lock(gpus, owner=name, lock_dir=tmp_path):
        log.append((name, "in", time.monotonic()))
        await asyncio.sleep(hold_s)
        log.append((name, "out", time.monotonic()))


async def test_starts_on_one_gpu_do_not_overlap(tmp_path: Path) -> None:
    log: list[tuple[str, str, float]] = []
    await asyncio.gather(*(_start(tmp_path, ["0"], 0.1, log, f"engine-{i}") for i in range(3)))
    events = [(name, what) for name, what, _ in sorted(log, key=lambda e: e[2])]
    # in/out pairs never interleave: each start runs alone
    for i in range(0, len(events), 2):
        assert events[i][1] == "in" and events[i + 1] == (events[i][0], "out")


async def test_starts_on_different_gpus_overlap(tmp_path: Path) -> None:
    log: list[tuple[str, str, float]] = []
    started = time.monotonic()
    await asyncio.gather(_start(tmp_path, ["0"], 0.2, log, "a"), _start(tmp_path, ["1"], 0.2, log, "b"))
    assert time.monotonic() - started < 0.35  # run together, not 0.4 s one after the other


async def test_no_gpu_takes_no_lock(tmp_path: Path) -> None:
    async with gpu_start_lock([], owner="cpu", lock_dir=tmp_path):
        pass
    assert not _files(tmp_path)


async def test_a_failed_start_releases_the_lock(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        async with gpu_start_lock(["0"], owner="a", lock_dir=tmp_path):
            raise RuntimeError("engine core initialization failed")
    started = time.monotonic()
    async with gpu_start_lock(["0"], owner="b", lock_dir=tmp_path, timeout_s=5):
        pass
    assert time.monotonic() - started < 1


async def test_a_hung_holder_does_not_block_forever(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "gpu-0.lock").touch()
    with (tmp_path / "gpu-0.lock").open("ab") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with caplog.at_level(logging.INFO, logger="serve_app.engine"):
            async with gpu_start_lock(["0"], owner="late", lock_dir=tmp_path, timeout_s=0.1):
                pass
    assert "waiting for" in caplog.text and "starting the engine anyway" in caplog.text


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
