"""A Ray cluster of three nodes on one machine: a head node for Serve's controller and the router,
two worker nodes for the model's replicas, a Serve proxy on every node.

Every node is its own raylet (``ray.cluster_utils.Cluster``), so a node can be lost the way a
machine is: every process of it killed at once. Custom resources pin the deployments: the router
asks for ``router_node`` (only the head has it), each model replica for one ``replica_slot`` (each
worker node has two, so a surviving worker can take the replica of a lost one).

The load enters at the router's own HTTP port on the head (Ray Serve direct ingress, the port the
shipped HAProxy door forwards to): on one machine every node's proxy shares one port, so a client
of "the proxy port" would be connected to a random node's proxy, and losing that node would cut
connections no server could save. A load balancer in front of a real cluster sends traffic to
the nodes that run a router.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import psutil

from serve_app.bench.readiness import wait_until_ok
from serve_app.config import AppConfig
from tests.faults.processes import APP, ROUTER_DEPLOYMENT, replica_processes
from tests.integration.conftest import START_TIMEOUT_S, free_port, kill_tree

ROUTER_RESOURCE = "router_node"
REPLICA_RESOURCE = "replica_slot"
REPLICA_SLOTS_PER_WORKER = 2
NODE_CPUS = 4  # logical: the machine has 2 cores, shared by every node


@dataclass
class MultiNodeCluster:
    cluster: Any  # ray.cluster_utils.Cluster
    redis_address: str | None  # GCS fault tolerance: the GCS keeps its tables in this Redis
    workers: list[Any] = field(default_factory=list)  # ray._private.node.Node, alive ones
    base_url: str = ""  # the router's direct-ingress port on the head
    proxy_url: str = ""  # Serve's proxy port (shared by every node's proxy)

    def raylet(self, node: Any) -> psutil.Process:
        return psutil.Process(node.all_processes["raylet"][0].process.pid)

    def node_of(self, process: psutil.Process) -> Any | None:
        """The worker node whose raylet ``process`` descends from (None: the head's)."""
        ancestors = {p.pid for p in process.parents()}
        return next((n for n in self.workers if self.raylet(n).pid in ancestors), None)

    def replicas_by_node(self, deployment: str) -> dict[Any, list[psutil.Process]]:
        placed: dict[Any, list[psutil.Process]] = {}
        for proc in replica_processes(deployment):
            placed.setdefault(self.node_of(proc), []).append(proc)
        return placed

    def kill_node(self, node: Any) -> int:
        """Lose ``node`` as a machine is lost: SIGKILL its raylet and every process under it at
        once (replicas, engine cores, agents), then let the cluster forget it. Returns how many
        processes were killed."""
        killed = len(kill_tree(self.raylet(node)))
        self.workers.remove(node)
        self.cluster.remove_node(node, allow_graceful=False)
        return killed


def pin(config: AppConfig) -> AppConfig:
    """``config`` with the router on the head, each model replica in a worker's slot, and the
    router's direct ingress on (the door this cluster's load uses)."""
    models = [
        m.model_copy(
            update={"ray_actor_options": m.ray_actor_options.model_copy(update={"resources": {REPLICA_RESOURCE: 1.0}})}
        )
        for m in config.models
    ]
    router = config.router.model_copy(update={"resources": {ROUTER_RESOURCE: 0.01}})
    server = config.server.model_copy(update={"ray_serve_direct_ingress": True})
    return config.model_copy(update={"models": models, "router": router, "server": server})


def router_port() -> int:
    """The router replica's direct-ingress HTTP port (Ray picks it from 30000-31000)."""
    (router,) = replica_processes(ROUTER_DEPLOYMENT)
    ports = [
        c.laddr.port
        for c in router.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and 30000 <= c.laddr.port < 31000
    ]
    if len(ports) != 1:
        raise LookupError(f"expected one direct-ingress port on the router, found {ports}")
    return ports[0]


def serve_deploy(config: AppConfig, port: int, replicas: dict[str, int]) -> None:
    """What ``serve deploy`` (and ``serve-app scale``, with ``replicas``: deployment name -> count)
    does: the app as a config, applied by Serve's controller through the call behind the REST API.
    Unlike ``serve.run``, an unchanged deployment keeps its replicas and a changed replica count
    only adds or drains replicas."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    app: dict[str, Any] = {"name": APP, "route_prefix": "/", "import_path": "serve_app.app:build_app"}
    app["args"] = config.model_dump(mode="json")
    app["deployments"] = [{"name": name, "num_replicas": n} for name, n in replicas.items()]
    schema = {"proxy_location": "EveryNode", "http_options": {"host": "127.0.0.1", "port": port}, "applications": [app]}
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(schema))


@contextmanager
def redis_for_gcs() -> Iterator[str | None]:
    """A throwaway Redis (Debian's ``redis-server``, no persistence) for the head's GCS to keep its
    tables in, so that a killed GCS restarts with the cluster's state (Ray's GCS fault tolerance,
    read from ``RAY_REDIS_ADDRESS`` when the head starts). None when no redis-server is installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = free_port()
    redis = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while not _accepts(port):
            if time.monotonic() > deadline or redis.poll() is not None:
                raise RuntimeError(f"redis-server did not start on {address}")
            time.sleep(0.1)
        os.environ["RAY_REDIS_ADDRESS"] = address
        yield address
    finally:
        os.environ.pop("RAY_REDIS_ADDRESS", None)
        redis.kill()
        redis.wait(timeout=30)


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def multi_node_cluster() -> Iterator[tuple[MultiNodeCluster, Callable[..., float]]]:
    """Starts the cluster and Serve (a proxy on every node); the yielded ``deploy(config,
    replicas=None)`` deploys the app pinned by :func:`pin` (see :func:`serve_deploy`) and returns
    the seconds until /ready answered 200."""
    from ray.cluster_utils import Cluster

    with ExitStack() as stack:
        redis_address = stack.enter_context(redis_for_gcs())
        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": NODE_CPUS, "resources": {ROUTER_RESOURCE: 1}, "include_dashboard": False},
        )
        stack.callback(cluster.shutdown)
        os.environ.pop("RAY_REDIS_ADDRESS", None)  # the head's GCS has it; worker nodes need no Redis
        yield from _serving(MultiNodeCluster(cluster, redis_address))


def _serving(state: MultiNodeCluster) -> Iterator[tuple[MultiNodeCluster, Callable[..., float]]]:
    import ray
    from ray import serve

    cluster = state.cluster
    try:
        for _ in range(2):
            state.workers.append(
                cluster.add_node(num_cpus=NODE_CPUS, resources={REPLICA_RESOURCE: REPLICA_SLOTS_PER_WORKER})
            )
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        port = free_port()
        serve.start(proxy_location="EveryNode", http_options={"host": "127.0.0.1", "port": port})
        state.proxy_url = f"http://127.0.0.1:{port}"

        def deploy(config: AppConfig, replicas: dict[str, int] | None = None) -> float:
            started = time.monotonic()
            serve_deploy(pin(config), port, replicas or {})
            wait_until_ok(f"{state.proxy_url}/ready", START_TIMEOUT_S, period_s=0.5, request_timeout_s=60)
            state.base_url = f"http://127.0.0.1:{router_port()}"
            return time.monotonic() - started

        yield state, deploy
    finally:
        # No serve.shutdown(): its graceful stop of every replica and of the controller takes half
        # a minute, and this cluster is thrown away. Every process under a raylet goes at once.
        from ray.serve.context import _disconnect

        _disconnect()  # forget this cluster's Serve controller (what serve.shutdown() ends with)
        ray.shutdown()
        os.environ.pop("RAY_ADDRESS", None)
        for node in [cluster.head_node, *state.workers]:
            with suppress(psutil.NoSuchProcess, KeyError, IndexError):
                kill_tree(state.raylet(node))
