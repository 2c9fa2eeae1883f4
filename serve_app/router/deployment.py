"""The router deployment: HTTP ingress in front of the replica deployments."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from serve_app.config import AppConfig
from serve_app.observability.logs import install_json_logging
from serve_app.observability.recorder import ServeAppMetrics
from serve_app.router.adapter_catalog import Catalog, app_catalog
from serve_app.router.client import RayReplicaClient
from serve_app.router.cluster_quota import ray_bank
from serve_app.router.flow_gate import build_flow_gate
from serve_app.router.ingress import build_fastapi
from serve_app.router.models import adapter_directory, build_readiness, build_relay


class RouterDeployment:
    """Wrapped by ``serve.ingress()`` in ``serve_app.app``; Ray Serve calls
    ``__serve_build_asgi_app__`` after the constructor to get the FastAPI app."""

    def __init__(self, config: AppConfig, replicas: Mapping[str, Any]) -> None:
        from ray import serve

        install_json_logging()  # serve_app.observability.logs says why not Ray Serve's JSON encoding
        self.config = config
        client = RayReplicaClient(replicas)
        context = serve.get_replica_context()
        replica_name = context.replica_id.unique_id
        self.relay = build_relay(config, client, ServeAppMetrics.for_ray(), replica_name=replica_name)
        if config.flow_control is not None:
            bank = ray_bank(context.app_name)
            self.relay.flow = build_flow_gate(config, bank, self.relay.metrics, replica_name)
        self.readiness = build_readiness(config, client)
        # The app's adapters; those added at run time are in a catalog shared by its router replicas.
        self.adapters = adapter_directory(config.models)
        self.adapter_catalog: Catalog | None = app_catalog(self.adapters, context.app_name)

    def __serve_build_asgi_app__(self) -> Any:
        return build_fastapi(self.config, self.relay, self.readiness, self.adapter_catalog, self.adapters)
