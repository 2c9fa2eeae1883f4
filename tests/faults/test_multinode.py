"""Fault scenarios across nodes: three raylets on one machine (tests/faults/cluster.py), the router on
the head, one replica of the embedded model on each worker node. Scenarios run in file order on
one cluster: a worker node lost under load (first, while each worker holds one replica; with
requests caught before their first token on it), a replica actor killed, an engine killed, a
scale-down under load, the GCS killed and restarted.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import psutil
import pytest

from serve_app.bench.fault_load import FaultLoad, LedgerPrompt, ledger_prompts
from serve_app.bench.ledger import Ledger, Outcome, ScenarioSummary
from serve_app.bench.settings import Target
from serve_app.config import AppConfig
from tests.faults.cluster import MultiNodeCluster, multi_node_cluster
from tests.faults.conftest import Scale
from tests.faults.processes import (
    engine_core_process,
    replica_actors,
    replica_names,
    replica_processes,
    running_replicas,
    wait_for,
)
from tests.faults.test_faults import LLM, MODEL, app_config, finish, token_counter

pytestmark = pytest.mark.integration

DEADLINE_S = 300.0
REPLACED_WITHIN_S = 360.0  # a new vLLM replica starting on 2 busy cores
CAUGHT_WITHIN_S = 30.0  # requests reaching the frozen replica
START_BOTH_WITHIN_S = 180.0  # the second replica's engine after the first one's, on 2 busy cores


@dataclass
class Nodes:
    cluster: MultiNodeCluster
    prompts: list[LedgerPrompt]
    count_tokens: Callable[[str], int]
    ready_after_s: float
    deploy: Callable[..., float]

    def target(self) -> Target:
        base = self.cluster.base_url
        return Target(url=base, model=MODEL, endpoint="completions", stream=True, timeout_s=DEADLINE_S, temperature=0)


# No scenario here relies on stall detection (a killed engine fails the engine's own check), and
# the node-loss scenario freezes an engine on purpose: the stall detector must not fail that
# replica's requests before the node goes (on 2 busy cores, catching them can take most of 15 s).
MULTINODE_STALL_TIMEOUT_S = 120.0


def two_replicas() -> AppConfig:
    config = app_config()
    model = config.models[0].model_copy(update={"num_replicas": 2, "engine_stall_timeout_s": MULTINODE_STALL_TIMEOUT_S})
    return config.model_copy(update={"models": [model]})


@pytest.fixture(scope="module")
def nodes(scale: Scale) -> Iterator[Nodes]:
    with multi_node_cluster() as (cluster, deploy):
        ready_s = deploy(two_replicas())
        # /ready answers once one replica of each model is; a scenario must start with both: a
        # replica that came up as the load started was once never sent a request in the scenario.
        both = wait_for(lambda: running_replicas() >= 2, START_BOTH_WITHIN_S, 0.5)
        assert both is not None, f"the second replica was not running {START_BOTH_WITHIN_S} s after /ready"
        count = token_counter()
        yield Nodes(cluster, ledger_prompts(count, variants=48, max_tokens=scale.max_tokens), count, ready_s, deploy)


def test_cluster_places_router_on_head_and_a_replica_on_each_worker(nodes: Nodes) -> None:
    from ray import serve

    placed = nodes.cluster.replicas_by_node(LLM)
    assert set(placed) == set(nodes.cluster.workers), f"replicas by node: {placed}"
    assert all(len(procs) == 1 for procs in placed.values())
    assert nodes.cluster.replicas_by_node("router").keys() == {None}  # the head
    proxies = serve.status().proxies
    assert len(proxies) == 3 and set(proxies.values()) == {"HEALTHY"}, proxies


def actor_in(replica_pid: int) -> Any:
    """The Serve replica actor running in process ``replica_pid``."""
    import ray

    for actor in replica_actors():
        if ray.get(actor.__ray_call__.remote(_pid), timeout=30) == replica_pid:
            return actor
    raise LookupError(f"no replica actor in pid {replica_pid}")


def outstanding(actor: Any) -> int:
    """The requests the replica holds (its own count; answered even while its engine is frozen,
    though slowly on 2 busy cores)."""
    import ray

    return ray.get(actor.record_routing_stats.remote(), timeout=20)["outstanding_requests"]


def _pid(_actor: object) -> int:
    import os

    return os.getpid()


def test_node_loss_under_load(nodes: Nodes, scale: Scale, report_scenario: Callable[[ScenarioSummary], None]) -> None:
    """A worker node with a replica is lost while streams run on it and requests wait there for
    their first token (its engine frozen just before, so that some do): the waiting ones are
    retried on the other node and succeed, the streams past their first token end with an error
    event and [DONE], and Serve starts a replacement on the surviving node."""
    cluster = nodes.cluster
    ledger = Ledger("node loss (a worker node with a replica killed)")
    placed = cluster.replicas_by_node(LLM)
    victim = min((n for n in cluster.workers if placed.get(n)), key=lambda n: len(placed[n]))
    (survivor,) = (n for n in cluster.workers if n is not victim)
    assert len(placed[victim]) == 1, f"the lost node must hold one replica: {placed}"
    doomed = placed[victim][0]
    doomed_actor, engine = actor_in(doomed.pid), engine_core_process(doomed)
    old = replica_names()
    seen: list[int] = []
    with FaultLoad(nodes.target(), nodes.prompts, ledger, clients=scale.clients) as load:
        time.sleep(3)
        # Freeze it while the router is using it (a stream of the load on it), not before.
        used = wait_for(lambda: outstanding(doomed_actor) >= 1, CAUGHT_WITHIN_S, 0.2)
        assert used is not None, f"the router sent the doomed replica nothing within {CAUGHT_WITHIN_S} s of load"
        engine.send_signal(signal.SIGSTOP)  # streams stall, new requests wait before their first token
        try:
            # The load has at most `clients` streams on the doomed replica, so one request more there
            # is one waiting for its first token; the burst is large enough that the router's
            # least-loaded choice sends some of it there once the survivor is busier.
            burst = FaultLoad(nodes.target(), nodes.prompts, ledger, clients=4 * scale.clients, rounds=1).start()
            caught = wait_for(
                lambda: seen.append(outstanding(doomed_actor)) or seen[-1] > scale.clients, CAUGHT_WITHIN_S, 0.5
            )
            with suppress(Exception):  # the latest count, as close to the loss as it gets
                seen.append(outstanding(doomed_actor))
        finally:  # whatever happened, the node goes: never leave a frozen engine behind
            load.mark_fault()
            killed = cluster.kill_node(victim)
        replaced = wait_for(lambda: bool(replica_names() - old) and running_replicas() >= 2, REPLACED_WITHIN_S, 1)
        time.sleep(scale.fault_load_s)
        assert burst.wait(), "burst requests still unanswered after their deadline"
    on_victim = seen[-1] if seen else 0
    placed = cluster.replicas_by_node(LLM)
    stream_errors = ledger.summary().outcomes.get("clear_error:stream_error", 0)
    ledger.checks["cluster_app_start_to_ready_s"] = round(nodes.ready_after_s, 1)  # two replicas, two nodes
    ledger.checks |= {"outstanding_on_lost_replica": on_victim, "caught_after_s": caught, "processes_killed": killed}
    ledger.checks |= {"stream_errors": stream_errors, "retried_before_first_token": on_victim - stream_errors}
    ledger.checks |= {"replaced_after_s": replaced, "replicas_on_survivor": len(placed.get(survivor, []))}
    summary = finish(ledger, report_scenario)
    assert replaced is not None, f"no replacement within {REPLACED_WITHIN_S} s"
    assert set(placed) == {survivor} and len(placed[survivor]) == 2, f"replicas by node: {placed}"
    assert summary.clear_errors == stream_errors, f"only streams past their first token may fail: {summary.outcomes}"
    assert on_victim - stream_errors >= 1, f"none waited for a first token on the lost node: {seen=} {caught=}"


def _replaced_under_load(nodes: Nodes, scale: Scale, ledger: Ledger, fault: Callable[[], None]) -> None:
    """Run ``fault`` under load, wait until Serve replaced the lost replica (two running again),
    keep the load a little longer; the replacement time goes into the ledger's checks."""
    old = replica_names()
    with FaultLoad(nodes.target(), nodes.prompts, ledger, clients=scale.clients) as load:
        time.sleep(3)
        load.mark_fault()
        fault()
        replaced = wait_for(lambda: bool(replica_names() - old) and running_replicas() >= 2, REPLACED_WITHIN_S, 1)
        time.sleep(scale.fault_load_s)
    ledger.checks["replaced_after_s"] = replaced
    assert replaced is not None, f"no replacement within {REPLACED_WITHIN_S} s"


def test_replica_actor_killed_under_load(nodes: Nodes, scale: Scale, report_scenario) -> None:
    """``ray.kill`` of one of two replicas: its streams end with an error event and [DONE], the
    rest go to the other replica, Serve starts a new one."""
    import ray

    ledger = Ledger("replica actor ray.kill (1 of 2) under load")
    (victim, *_) = replica_actors()
    _replaced_under_load(nodes, scale, ledger, lambda: ray.kill(victim, no_restart=True))
    summary = finish(ledger, report_scenario)
    assert summary.succeeded > 0


def test_engine_killed_under_load(nodes: Nodes, scale: Scale, report_scenario) -> None:
    """SIGKILL of one replica's engine core: that replica's requests end clearly (error event and
    [DONE], or 503 until Serve's health check takes it out), the other serves, Serve replaces it."""
    ledger = Ledger("engine core SIGKILL (1 of 2 replicas) under load")
    victim = engine_core_process(replica_processes(LLM)[0])
    _replaced_under_load(nodes, scale, ledger, victim.kill)
    summary = finish(ledger, report_scenario)
    assert summary.succeeded > 0


def _outstanding_by_pid() -> dict[int, int]:
    return {proc.pid: outstanding(actor_in(proc.pid)) for proc in replica_processes(LLM)}


def test_scale_down_under_load_drains(nodes: Nodes, scale: Scale, report_scenario) -> None:
    """Two replicas to one (``serve-app scale``'s config change) while both stream long answers:
    the removed one finishes what it holds before it stops."""
    ledger = Ledger("scale-down 2 -> 1 under load (drain)")
    clients = 2 * scale.clients
    long_prompts = ledger_prompts(nodes.count_tokens, variants=clients, max_tokens=96)
    with FaultLoad(nodes.target(), long_prompts, ledger, clients=clients) as load:
        busy = wait_for(lambda: min(_outstanding_by_pid().values()) >= 1, CAUGHT_WITHIN_S, period_s=0.5)
        held = _outstanding_by_pid()
        load.mark_fault()
        nodes.deploy(two_replicas(), replicas={LLM: 1})
        one_left = wait_for(lambda: len(_live(held)) == 1 and running_replicas() == 1, REPLACED_WITHIN_S, 1)
        time.sleep(scale.fault_load_s)
    removed = {pid: n for pid, n in held.items() if pid not in _live(held)}
    ledger.checks |= {"both_busy_after_s": busy, "outstanding_by_replica_at_scale_down": held}
    ledger.checks |= {"removed_replica_held": sum(removed.values()), "one_replica_after_s": one_left}
    summary = finish(ledger, report_scenario)
    assert one_left is not None and len(removed) == 1, f"not scaled down: {held}, alive {_live(held)}"
    assert sum(removed.values()) >= 1, "the removed replica held no request: nothing was drained"
    assert summary.succeeded == summary.sent, f"a drain fails nothing: {summary.outcomes}"


def _live(pids: dict[int, int]) -> set[int]:
    return {pid for pid in pids if psutil.pid_exists(pid)}


GCS_DOWN_S = 15.0  # well inside Ray's 60 s for raylets and workers to find the GCS again


def test_gcs_killed_and_restarted_under_load(nodes: Nodes, scale: Scale, report_scenario) -> None:
    """The head's GCS process killed under load, restarted GCS_DOWN_S later from its Redis: requests
    keep flowing router -> replica meanwhile (the data path needs no GCS), and the cluster comes
    back whole (Serve reports its replica running again)."""
    if nodes.cluster.redis_address is None:
        pytest.skip("no redis-server on PATH (Debian package redis-server): GCS fault tolerance needs one")
    ledger = Ledger(f"GCS killed, restarted {GCS_DOWN_S:.0f} s later (Redis-backed) under load")
    head = nodes.cluster.cluster.head_node
    with FaultLoad(nodes.target(), nodes.prompts, ledger, clients=scale.clients) as load:
        time.sleep(3)
        down_at = load.mark_fault()
        head.kill_gcs_server()
        time.sleep(GCS_DOWN_S)
        head.start_gcs_server()
        up_at = load.now()
        healthy = wait_for(lambda: running_replicas() >= 1 and _app_running(), REPLACED_WITHIN_S, 1)
        time.sleep(scale.fault_load_s)
    served_while_down = [e for e in ledger.entries if e.start_s >= down_at and e.end_s <= up_at]
    ledger.checks |= {"gcs_down_s": round(up_at - down_at, 1), "healthy_after_restart_s": healthy}
    ledger.checks["answered_while_gcs_down"] = sum(e.verdict.outcome is Outcome.SUCCEEDED for e in served_while_down)
    summary = finish(ledger, report_scenario)
    assert healthy is not None, "Serve did not report the app running after the GCS came back"
    assert ledger.checks["answered_while_gcs_down"] >= 1, "nothing was answered while the GCS was down"
    assert summary.succeeded == summary.sent, f"the GCS is off the data path: {summary.outcomes}"


def _app_running() -> bool:
    from ray import serve

    return serve.status().applications["serve-app"].status == "RUNNING"
