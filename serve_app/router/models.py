"""The router's side of each ``models:`` entry, split once by consumer: the router deployment's
objects never hold a whole :class:`~serve_app.config_model.ModelConfig`, only the parts they read.

* :class:`RoutedModel`: what the HTTP ingress and the security guard read (names, the
  :class:`~serve_app.config_model.LimitsConfig` part, a few facts derived from the rest).
* :class:`~serve_app.router.readiness.ProbeTarget`: the model's id and its
  :class:`~serve_app.config_model.HealthConfig` part, for ``/ready``.
* The :class:`~serve_app.config_engine.EngineConfig` part, for the adapter directory (ids, aliases, LoRA).
* The ``batching`` section and the router's admission part, for the relay.

This module is the only one under ``serve_app.router`` that reads a ``ModelConfig``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from serve_app.config import AppConfig, ModelConfig
from serve_app.config_model import LimitsConfig
from serve_app.core.adapters import AdapterDirectory, AdapterRef
from serve_app.core.engine_priority import uses_priority_scheduling
from serve_app.observability.recorder import ServeAppMetrics
from serve_app.router.adapter_view import AdapterView
from serve_app.router.client import ReplicaClient
from serve_app.router.errors import OpenAIError
from serve_app.router.readiness import ProbeTarget, Readiness
from serve_app.router.relay import Relay


@dataclass(frozen=True)
class RoutedModel:
    """One model as the router's HTTP side sees it."""

    id: str
    names: tuple[str, ...]  # its id, then its aliases: what clients may send as ``model``
    limits: LimitsConfig  # the caps the router enforces and the length it assumes
    generates: bool  # task "generate" (an embedding model generates no tokens)
    priority_scheduling: bool  # its engine schedules by priority (serve_app.core.engine_priority)
    lora: bool  # it serves LoRA adapters: its model cards are reconciled with the adapter catalog
    scales_to_zero: bool  # min_replicas 0: listed from the config, never probed

    @classmethod
    def of(cls, model: ModelConfig) -> RoutedModel:
        return cls(
            id=model.id,
            names=(model.id, *model.openai_server.served_model_aliases),
            limits=model.limits(),
            generates=model.task == "generate",
            priority_scheduling=uses_priority_scheduling(model.engine_options),
            lora=model.lora is not None,
            scales_to_zero=_scales_to_zero(model),
        )


def _scales_to_zero(model: ModelConfig) -> bool:
    return model.autoscaling is not None and model.autoscaling.min_replicas == 0


def routed_models(models: Sequence[ModelConfig]) -> tuple[RoutedModel, ...]:
    return tuple(RoutedModel.of(m) for m in models)


def adapter_directory(models: Sequence[ModelConfig]) -> AdapterDirectory:
    """The directory of the config's models and adapters, over their engine parts."""
    return AdapterDirectory([m.engine() for m in models])


def build_relay(
    config: AppConfig,
    client: ReplicaClient,
    metrics: ServeAppMetrics,
    replica_name: str = "local",
    clock: Callable[[], float] = time.monotonic,
) -> Relay:
    batching = {m.id: m.batching for m in config.models}
    return Relay(config.router.admission(), batching, client, metrics, replica_name, clock)


def class_pools(config: AppConfig) -> dict[str, dict[str, str]]:
    """Each priority class's ``model_pools`` (config-checked: ids of models of the same task)."""
    return config.flow_control.model_pools() if config.flow_control is not None else {}


def build_readiness(config: AppConfig, client: ReplicaClient) -> Readiness:
    targets = [ProbeTarget(m.id, m.health(), _scales_to_zero(m)) for m in config.models]
    return Readiness(targets, client)


class ModelDirectory:
    """The names clients may send as ``model``: each model's id and aliases, and its LoRA adapters
    (those in the config and those added at run time: ``self.adapters``, this router replica's view
    of the app's catalog)."""

    def __init__(
        self,
        models: Sequence[RoutedModel],
        adapters: AdapterView,
        pools: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.all = tuple(models)
        self.default = models[0]
        self.by_id = {m.id: m for m in models}
        self._by_name = {n: m for m in models for n in m.names}
        self.adapters = adapters
        self._pools = pools or {}  # class -> asked model id -> the id of the model serving it

    def for_class(self, model: RoutedModel, priority: str) -> RoutedModel:
        """The model that serves ``priority``'s requests for ``model``: its class's pool, if any."""
        pool = self._pools.get(priority, {}).get(model.id)
        return self.by_id[pool] if pool is not None else model

    async def find(self, name: str | None) -> tuple[RoutedModel, AdapterRef | None]:
        """The model ``name`` names, and the adapter when it names one; a 404 when neither."""
        if name is None:
            return self.default, None  # vLLM serves a request without a model with its own model
        found = self._by_name.get(name)
        if found is not None:
            return found, None
        adapter = await self.adapters.find(name)
        if adapter is None:
            raise OpenAIError(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")
        return self.by_id[adapter.model_id], adapter
