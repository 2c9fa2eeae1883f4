"""Fixtures that run the real stack: Ray Serve + the router + vLLM (CPU) on the embedded model."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from serve_app.bench.readiness import wait_until_ok
from serve_app.config import AppConfig, app_args_from_serve_file, load_config
from serve_app.ports import free_port

REPO = Path(__file__).resolve().parents[2]
LOCAL_CONFIG = REPO / "configs" / "local.yaml"
START_TIMEOUT_S = 420
DELETE_TIMEOUT_S = 300


def wait_ready(base_url: str, timeout_s: float = START_TIMEOUT_S) -> float:
    """Poll /ready until it answers 200; returns the seconds it took."""
    return wait_until_ok(f"{base_url}/ready", timeout_s, period_s=0.5, request_timeout_s=60)


def local_config(**model_overrides: Any) -> AppConfig:
    args = app_args_from_serve_file(LOCAL_CONFIG)
    args["models"][0].update(model_overrides)
    return load_config(args)


@dataclass
class RunningApp:
    base_url: str
    config: AppConfig
    ready_after_s: float


# The door the project ships (Makefile, cluster/): Ray Serve's HAProxy on the HTTP port, read by
# Ray from the environment of the process that starts it.
SHIPPED_DOOR_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1"}


MODEL_REPLICAS_STOP_TIMEOUT_S = 120

# vLLM binds every CPU engine's compute thread to core 0 (it keeps the other core of 2 for the
# frontends), the stack's replicas' included: a plain vLLM server started beside the stack as its
# reference computes on core 1 instead, so the two sides answer at the same time rather than in
# turns. One thread either way, so its answers are the same.
PLAIN_VLLM_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "1"}


def serve_replica_deployment(cmdline: list[str] | None) -> str | None:
    """The deployment a Serve replica process hosts, read from its title
    "ray::ServeReplica:<app>:<deployment>[.<method running>]" (deployment names have no dots);
    None for any other process."""
    title = " ".join(cmdline or []).strip()
    return title.split(":")[-1].split(".")[0] if title.startswith("ray::ServeReplica:") else None


def model_replica_processes() -> list[psutil.Process]:
    """Ray's worker processes hosting a Serve replica other than the router (its title names it)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        deployment = serve_replica_deployment(proc.info["cmdline"])
        if deployment is not None and deployment != "router":
            found.append(proc)
    return found


def haproxy_processes() -> list[psutil.Process]:
    """The HAProxy binaries Ray Serve's HAProxy manager actors started (their children)."""
    managers = [
        p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [""])[0].startswith("ray::HAProxyManager")
    ]
    children = []
    for manager in managers:
        with contextlib.suppress(psutil.NoSuchProcess):
            children += manager.children(recursive=True)
    return children


def kill_tree(root: psutil.Process) -> list[psutil.Process]:
    """SIGKILL ``root`` and every process under it at once; returns the processes signalled."""
    try:
        doomed = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for proc in doomed:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    return doomed


def stop_serve_and_ray() -> None:
    """The model replicas and everything under them (each engine's processes) killed at once, then
    Ray, then the door's HAProxy. Ray goes next anyway, so a graceful stop here only costs time: the
    graceful paths (drain, shutdown under load) are the fault suite's to test. Not
    serve.shutdown(): it also waits out the router's direct-ingress drain period (30 s in Ray
    2.60), which exists for load balancers still sending to it."""
    import ray
    from ray.serve.context import _disconnect

    doomed = [proc for replica in model_replica_processes() for proc in kill_tree(replica)]
    psutil.wait_procs(doomed, timeout=MODEL_REPLICAS_STOP_TIMEOUT_S)
    haproxies = haproxy_processes()  # the door's binary outlives its Ray actor unless stopped
    _disconnect()  # forget this session's Serve controller (what serve.shutdown() ends with)
    ray.shutdown()
    for proc in haproxies:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    psutil.wait_procs(haproxies, timeout=10)


RAY_START_ATTEMPTS = 2


def start_ray(**options: Any) -> None:
    """``ray.init`` with one retry: on 2 loaded cores, a head node's processes can miss Ray's own
    start deadline right after the previous module's cluster went down (a CI run failed once that
    way, in the setup of an otherwise passing module). A second failure is raised."""
    import ray

    for attempt in range(1, RAY_START_ATTEMPTS + 1):
        try:
            ray.init(**options)
            return
        except Exception as err:
            print(f"ray.init attempt {attempt} failed: {type(err).__name__}: {err}", flush=True)
            ray.shutdown()
            if attempt == RAY_START_ATTEMPTS:
                raise
            time.sleep(5)


@contextmanager
def running_serve(
    door_env: dict[str, str] | None = None, **ray_init_options: Any
) -> Iterator[Callable[..., RunningApp]]:
    """Starts Ray and Serve behind the shipped door (or ``door_env``: {} for Ray's own proxy); the
    yielded ``start(config)`` deploys an app and waits for /ready."""
    from ray import serve

    from serve_app.app import build_app

    env = SHIPPED_DOOR_ENV if door_env is None else door_env
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    port = free_port()
    # Logical CPUs: the machine has 2 cores, but router + replicas each reserve some.
    start_ray(num_cpus=8, include_dashboard=False, log_to_driver=False, **ray_init_options)
    serve.start(http_options={"host": "127.0.0.1", "port": port})

    def start(config: AppConfig, name: str = "serve-app") -> RunningApp:
        if name in serve.status().applications:
            # A fresh app, not an in-place update of the previous test's. Serve's own blocking
            # delete gives up after 60 s, which a replica still starting (a replacement after a
            # kill) can outlast on 2 loaded cores; its graceful-shutdown bound is longer.
            serve.delete(name, _blocking=False)
            deadline = time.monotonic() + DELETE_TIMEOUT_S
            while (left := serve.status().applications.get(name)) is not None and left.status != "NOT_STARTED":
                if time.monotonic() > deadline:
                    raise TimeoutError(f"app {name!r} not deleted after {DELETE_TIMEOUT_S} s")
                time.sleep(1)
        started = time.monotonic()
        serve.run(build_app(config), name=name, route_prefix="/", blocking=False)
        base_url = f"http://127.0.0.1:{port}"
        wait_ready(base_url)
        return RunningApp(base_url, config, time.monotonic() - started)

    try:
        yield start
    finally:
        stop_serve_and_ray()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def serve_app_factory() -> Iterator[Callable[..., RunningApp]]:
    """Starts Ray once per module; ``start(config)`` deploys an app and waits for /ready."""
    with running_serve() as start:
        yield start


@dataclass
class MetricsServe:
    start: Callable[..., RunningApp]
    # host:port of this node's Ray metrics agent (Prometheus text format on /metrics).
    metrics_target: str


@pytest.fixture(scope="module")
def serve_app_with_metrics() -> Iterator[MetricsServe]:
    """Like ``serve_app_factory``, with Ray's metrics agent on a known free port, exporting every second."""
    port = free_port()
    # Ray's default export period is 10 s; 1 s keeps a test that waits for new series short.
    options = {"_metrics_export_port": port, "_system_config": {"metrics_report_interval_ms": 1000}}
    with running_serve(**options) as start:
        import ray

        (node,) = ray.nodes()
        assert node["MetricsExportPort"] == port
        yield MetricsServe(start, f"{node['NodeManagerAddress']}:{port}")
