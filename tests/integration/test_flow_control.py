"""Cluster-wide quotas on the real stack (Ray Serve, two router replicas behind the shipped
HAProxy door, vLLM on CPU): a key limited to T tokens per window gets at most T (plus the stated
tolerance: its requests' tokens above their pre-charge) across both router replicas; another key
is unaffected; quota refusals are fast 429s with Retry-After; the usage endpoint agrees with what
the clients were served once one sync interval has passed."""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from serve_app.config import load_config
from serve_app.core.request_facts import read_facts
from serve_app.router.cluster_quota import BANK_NAMESPACE, bank_actor_name
from tests.integration.conftest import LOCAL_CONFIG, RunningApp, app_args_from_serve_file

KEYS = {
    "limited": "sk-limited-0123456789abcdef",
    "other": "sk-other-0123456789abcdef",
    "ops": "sk-ops-0123456789abcdef",
}
TOKENS_PER_WINDOW = 400
WINDOW_S = 15.0
SYNC_S = 0.2
PROMPT = {"model": "smollm2-135m-instruct", "prompt": "The capital of France is", "max_tokens": 16, "temperature": 0}


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def flow_config() -> Any:
    args = app_args_from_serve_file(LOCAL_CONFIG)
    args["models"][0]["max_model_len"] = 512
    args["router"] = {"num_replicas": 2}
    args["flow_control"] = {
        "minute_s": WINDOW_S,
        "sync_interval_s": SYNC_S,
        "tenants": [
            {"name": "limited", "api_key_sha256": [digest(KEYS["limited"])], "tokens_per_minute": TOKENS_PER_WINDOW},
            {"name": "other", "api_key_sha256": [digest(KEYS["other"])], "tokens_per_minute": 100_000},
            {"name": "ops", "api_key_sha256": [digest(KEYS["ops"])], "admin": True},
        ],
    }
    return load_config(args)


class Sender:
    """``clients`` threads posting the prompt with one key until ``stop_at`` (wall clock)."""

    def __init__(self, base_url: str, key: str, clients: int, stop_at: float) -> None:
        self.base_url, self.key, self.stop_at = base_url, key, stop_at
        self.answers: list[tuple[int, float, int, dict[str, str]]] = []  # status, seconds, tokens, headers
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.base_url, timeout=120) as client:
            while time.time() < self.stop_at:
                started = time.perf_counter()
                resp = client.post("/v1/completions", json=PROMPT, headers=headers)
                took = time.perf_counter() - started
                usage = resp.json().get("usage") or {} if resp.status_code == 200 else {}
                tokens = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
                with self._lock:
                    self.answers.append((resp.status_code, took, tokens, dict(resp.headers)))
                if resp.status_code == 429:
                    time.sleep(0.05)

    def __enter__(self) -> Sender:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for thread in self._threads:
            thread.join(timeout=180)


def test_a_key_gets_at_most_its_quota_across_two_router_replicas(
    serve_app_factory: Callable[..., RunningApp],
) -> None:
    import ray

    app = serve_app_factory(flow_config())
    # One whole quota window, from just after its start to just before its end.
    start = (math.floor(time.time() / WINDOW_S) + 1) * WINDOW_S
    time.sleep(start - time.time() + 0.2)
    stop_at = start + WINDOW_S - 1.5
    test_started = time.perf_counter()
    with (
        Sender(app.base_url, KEYS["limited"], 4, stop_at) as limited,
        Sender(app.base_url, KEYS["other"], 1, stop_at) as other,
    ):
        pass
    served = sum(tokens for status, _, tokens, _ in limited.answers if status == 200)
    estimate = read_facts(PROMPT).cost(app.config.models[0].default_max_tokens)
    actual = max(tokens for status, _, tokens, _ in limited.answers if status == 200)
    tolerance = max(0, actual - estimate) * sum(1 for a in limited.answers if a[0] == 200)
    refusals = [a for a in limited.answers if a[0] == 429]
    statuses = {a[0] for a in limited.answers}
    print(
        f"\nserved {served} tokens of {TOKENS_PER_WINDOW} (tolerance {tolerance}, estimate {estimate}, actual {actual})"
    )
    print(f"limited: {len(limited.answers)} answers, {len(refusals)} 429s; other: {len(other.answers)} answers")
    assert statuses <= {200, 429}, statuses
    assert TOKENS_PER_WINDOW * 0.75 <= served <= TOKENS_PER_WINDOW + tolerance
    assert refusals, "the limited key must reach its quota"
    assert all(int(h["retry-after"]) >= 1 and h["content-type"].startswith("application/json") for *_, h in refusals)
    refusal_times = sorted(took for _, took, _, _ in refusals)
    p99 = refusal_times[min(len(refusal_times) - 1, math.ceil(0.99 * len(refusal_times)) - 1)]
    print(f"429 latency p50 {refusal_times[len(refusal_times) // 2] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    assert p99 < 0.25
    assert other.answers and {a[0] for a in other.answers} == {200}, "another key is unaffected"

    # Both router replicas admitted the limited key's requests (the bank's per-replica tally).
    bank = ray.get_actor(bank_actor_name("serve-app"), namespace=BANK_NAMESPACE)
    window = math.floor(start / WINDOW_S)
    by_replica = ray.get(bank.used_by_replica.remote(("limited", "tokens", window)))
    print(f"tokens by router replica: {by_replica}")
    assert len([v for v in by_replica.values() if v > 0]) == 2, by_replica
    # Within one sync interval, the usage endpoint counts exactly what was served (actual tokens).
    time.sleep(SYNC_S * 3)
    resp = httpx.get(f"{app.base_url}/admin/usage/limited", headers={"Authorization": f"Bearer {KEYS['ops']}"})
    if math.floor(time.time() / WINDOW_S) == window:
        assert resp.json()["tenants"]["limited"]["tokens_per_minute"]["used"] == served
    assert sum(by_replica.values()) == served
    forbidden = httpx.get(f"{app.base_url}/admin/usage", headers={"Authorization": f"Bearer {KEYS['other']}"})
    assert forbidden.status_code == 403
    print(f"measured part took {time.perf_counter() - test_started:.1f} s; app ready after {app.ready_after_s:.1f} s")


def pooled_config() -> Any:
    """The model twice: a batch tenant's requests go to the second entry, a pool under SCHED_IDLE."""
    args = app_args_from_serve_file(LOCAL_CONFIG)
    (model,) = args["models"]
    model["max_model_len"] = 512
    pool = model | {"id": model["id"] + "-batch", "cpu_scheduling": "idle"}
    args["models"] = [model, pool]
    args["flow_control"] = {
        "tenants": [
            {"name": "limited", "api_key_sha256": [digest(KEYS["limited"])], "priority": "batch"},
            {"name": "other", "api_key_sha256": [digest(KEYS["other"])]},
        ],
        "batch": {"max_wait_s": 30, "model_pools": {model["id"]: pool["id"]}},
    }
    return load_config(args)


def test_a_batch_pool_serves_the_batch_class_on_idle_cpu_priority(
    serve_app_factory: Callable[..., RunningApp],
) -> None:
    import os

    from tests.integration.conftest import model_replica_processes, serve_replica_deployment

    app = serve_app_factory(pooled_config())
    served = {}
    for tenant in ("limited", "other"):
        answer = httpx.post(f"{app.base_url}/v1/completions", json=PROMPT, headers=bearer(tenant), timeout=120)
        assert answer.status_code == 200, answer.text
        served[tenant] = answer.json()["model"]
    assert served == {"limited": PROMPT["model"] + "-batch", "other": PROMPT["model"]}
    policies: dict[str, set[int]] = {}
    for replica in model_replica_processes():
        deployment = serve_replica_deployment(replica.cmdline()) or ""
        tree = [replica, *replica.children(recursive=True)]
        policies[deployment] = {policy for p in tree for t in p.threads() if (policy := _policy(t.id)) is not None}
        assert len(tree) >= 2, f"{deployment}: the engine's processes run under the replica"
    assert policies == {
        f"llm-{PROMPT['model']}-batch": {os.SCHED_IDLE},
        f"llm-{PROMPT['model']}": {os.SCHED_OTHER},
    }, policies


def _policy(thread_id: int) -> int | None:
    import os

    try:
        return os.sched_getscheduler(thread_id)
    except ProcessLookupError:  # a thread that ended meanwhile
        return None


def bearer(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}
