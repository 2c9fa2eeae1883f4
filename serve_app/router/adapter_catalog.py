"""Where the app's catalog of run-time LoRA adapters lives (``serve_app.core.adapter_catalog``):
in a named Ray actor, one per app, that every router replica finds or creates by name (as the
quota bank, ``serve_app.router.cluster_quota``: no new infrastructure), or in this process
(unit tests; one router without Ray).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

from serve_app.core.adapter_catalog import AdapterCatalog, CatalogState, Placement
from serve_app.core.adapters import AdapterDirectory, AdapterRef
from serve_app.router.cluster_quota import BANK_NAMESPACE


class Catalog(Protocol):
    def read(self, epoch: str | None, version: int) -> Awaitable[CatalogState | None]: ...

    def add(
        self, adapter: AdapterRef, per_model_limit: int, placement: Placement | None = None
    ) -> Awaitable[tuple[str | None, CatalogState]]: ...

    def remove(self, name: str) -> Awaitable[tuple[bool, CatalogState]]: ...

    def seed(self, adapters: tuple[AdapterRef, ...]) -> Awaitable[CatalogState]: ...


class LocalCatalog:
    """The catalog in this process: router replicas built over the same one share it."""

    def __init__(self, catalog: AdapterCatalog | None = None) -> None:
        self.catalog = catalog or AdapterCatalog()

    async def read(self, epoch: str | None, version: int) -> CatalogState | None:
        return self.catalog.read(epoch, version)

    async def add(
        self, adapter: AdapterRef, per_model_limit: int, placement: Placement | None = None
    ) -> tuple[str | None, CatalogState]:
        return self.catalog.add(adapter, per_model_limit, placement)

    async def remove(self, name: str) -> tuple[bool, CatalogState]:
        return self.catalog.remove(name)

    async def seed(self, adapters: tuple[AdapterRef, ...]) -> CatalogState:
        return self.catalog.seed(adapters)


class RayCatalog:
    """The catalog in the app's named actor: each method is one actor call."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    async def read(self, epoch: str | None, version: int) -> CatalogState | None:
        state: CatalogState | None = await self.actor.read.remote(epoch, version)
        return state

    async def add(
        self, adapter: AdapterRef, per_model_limit: int, placement: Placement | None = None
    ) -> tuple[str | None, CatalogState]:
        added: tuple[str | None, CatalogState] = await self.actor.add.remote(adapter, per_model_limit, placement)
        return added

    async def remove(self, name: str) -> tuple[bool, CatalogState]:
        removed: tuple[bool, CatalogState] = await self.actor.remove.remote(name)
        return removed

    async def seed(self, adapters: tuple[AdapterRef, ...]) -> CatalogState:
        state: CatalogState = await self.actor.seed.remote(adapters)
        return state


def catalog_actor_name(app_name: str) -> str:
    return f"serve-app-adapter-catalog-{app_name}"


def ray_catalog(app_name: str) -> RayCatalog:
    """The app's catalog actor, created by the first router replica that asks. Detached, so it
    outlives a router replica (a restarted one gets the adapters back from it) and a redeploy of
    the app; Ray restarts it if it dies, empty, and router replicas seed it again."""
    import ray

    actor_class = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(AdapterCatalog)
    actor = actor_class.options(
        name=catalog_actor_name(app_name), namespace=BANK_NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote()
    return RayCatalog(actor)


def app_catalog(adapters: AdapterDirectory, app_name: str) -> Catalog | None:
    """The app's catalog (:func:`ray_catalog`) where some model takes adapters at run time, as
    ``adapters`` answers; else None: there is nothing to record or read."""
    return ray_catalog(app_name) if adapters.takes_dynamic else None
