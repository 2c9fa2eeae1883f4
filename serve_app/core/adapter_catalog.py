"""The cluster-wide record of the LoRA adapters added at run time (pure: no Ray).

One per app, inside a named Ray actor (``serve_app.router.adapter_catalog``) that every router
replica finds by name, as the quota bank. A load or unload through any router replica writes
through to it; each router replica keeps a copy (``serve_app.router.adapter_view``) and reads the
catalog again when its copy is older than its bound, or when a request names an adapter it does
not know. A router replica that starts (or restarts) reads it first, so it serves every adapter
added before.

Every change bumps ``version``, so a reader that already has the newest state gets nothing back,
and one that has an older one gets the whole (small: bounded by ``max_dynamic_adapters`` per
model) set, unloads included. ``epoch`` names one life of the catalog: an actor that Ray restarted
starts empty in a new epoch, and the first router replica to see it ``seed``s it with what it had.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from serve_app.core.adapters import AdapterRef


@dataclass(frozen=True)
class CatalogState:
    epoch: str
    version: int
    adapters: tuple[AdapterRef, ...]


class AdapterCatalog:
    """Adapter name -> its base and path, for every adapter added at run time."""

    def __init__(self, epoch: str | None = None) -> None:
        self.epoch = epoch or uuid.uuid4().hex
        self.version = 0
        self._adapters: dict[str, AdapterRef] = {}

    def state(self) -> CatalogState:
        return CatalogState(self.epoch, self.version, tuple(self._adapters.values()))

    def read(self, epoch: str | None, version: int) -> CatalogState | None:
        """The state, or None when the reader has it already (same epoch and version)."""
        return None if (epoch, version) == (self.epoch, self.version) else self.state()

    def add(self, adapter: AdapterRef, per_model_limit: int) -> tuple[str | None, CatalogState]:
        """Record ``adapter``; the reason it cannot be ("taken": the name is recorded with another
        base or path; "limit": its base holds ``per_model_limit`` already) or None, and the state.
        Adding one that is recorded the same way already changes nothing (two routers loading
        the same adapter at once both succeed)."""
        current = self._adapters.get(adapter.name)
        if current is not None:
            return (None if current == adapter else "taken"), self.state()
        if sum(a.model_id == adapter.model_id for a in self._adapters.values()) >= per_model_limit:
            return "limit", self.state()
        self._adapters[adapter.name] = adapter
        self.version += 1
        return None, self.state()

    def remove(self, name: str) -> tuple[bool, CatalogState]:
        """Forget ``name``; whether it was recorded, and the state."""
        if self._adapters.pop(name, None) is None:
            return False, self.state()
        self.version += 1
        return True, self.state()

    def seed(self, adapters: tuple[AdapterRef, ...]) -> CatalogState:
        """Restore what a router replica knew, when nothing was written in this epoch yet (the
        actor was restarted and lost its state); otherwise the state as it is."""
        if self.version == 0 and adapters:
            self._adapters = {a.name: a for a in adapters}
            self.version = 1
        return self.state()
