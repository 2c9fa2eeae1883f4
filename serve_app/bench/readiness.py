"""Waiting for a server under test to answer: the one poll loop the benchmarks and tests share."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx


def wait_until_ok(
    url: str,
    timeout_s: float,
    *,
    process: subprocess.Popen[Any] | None = None,
    period_s: float = 1.0,
    request_timeout_s: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Poll ``url`` with GET until it answers 200; returns the seconds that took.

    Raises RuntimeError as soon as ``process`` (the server, when we started it) has exited, and
    TimeoutError after ``timeout_s`` naming the last answer or connection error seen."""
    started = clock()
    last = "no answer"
    while clock() - started < timeout_s:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with {process.returncode} before answering 200")
        try:
            resp = httpx.get(url, timeout=request_timeout_s)
            if resp.status_code == 200:
                return clock() - started
            last = f"{resp.status_code}: {resp.text[:300]}"
        except httpx.HTTPError as err:
            last = repr(err)
        sleep(period_s)
    raise TimeoutError(f"{url} not 200 after {timeout_s:g} s: {last}")
