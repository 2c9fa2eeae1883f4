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

Each adapter also records the model replica its load went to (a :class:`Placement`), so that every
router replica sends the adapter's requests there before that replica's routing stats, polled
every couple of seconds, report it (each router replica would otherwise place it by its own
polled stats, which may differ, and another replica would load it too). The catalog only stores
it; a reader uses it while it is younger than :data:`PLACEMENT_KEEP_S` (by when the replica's own
stats say whether it holds the adapter); it goes with the adapter's unload, and a restarted
catalog has none (placements are hints, not state).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from serve_app.core.adapters import AdapterRef

# How long a recorded placement steers the adapter's requests: a few routing-stats periods
# (serve_app.app polls them every 2 s), after which the replica's own report decides.
PLACEMENT_KEEP_S = 10.0


@dataclass(frozen=True)
class Placement:
    """The model replica a run-time load of ``adapter`` went to, and when (wall-clock seconds:
    router replicas on several nodes compare it)."""

    adapter: str
    replica_id: str
    recorded_at: float

    def steers(self, now: float, keep_s: float = PLACEMENT_KEEP_S) -> bool:
        """Whether it still says where the adapter's requests go. ``now`` from another router
        replica's clock, maybe a little behind the writer's: a placement "from the future" steers
        too, unless it is as far ahead as it would be old."""
        return abs(now - self.recorded_at) < keep_s


@dataclass(frozen=True)
class CatalogState:
    epoch: str
    version: int
    adapters: tuple[AdapterRef, ...]
    placements: tuple[Placement, ...] = ()


class AdapterCatalog:
    """Adapter name -> its base and path, for every adapter added at run time."""

    def __init__(self, epoch: str | None = None) -> None:
        self.epoch = epoch or uuid.uuid4().hex
        self.version = 0
        self._adapters: dict[str, AdapterRef] = {}
        self._placements: dict[str, Placement] = {}  # adapter name -> where its last load went

    def state(self) -> CatalogState:
        return CatalogState(self.epoch, self.version, tuple(self._adapters.values()), tuple(self._placements.values()))

    def read(self, epoch: str | None, version: int) -> CatalogState | None:
        """The state, or None when the reader has it already (same epoch and version)."""
        return None if (epoch, version) == (self.epoch, self.version) else self.state()

    def add(
        self, adapter: AdapterRef, per_model_limit: int, placement: Placement | None = None
    ) -> tuple[str | None, CatalogState]:
        """Record ``adapter`` (and where its load went); the reason it cannot be ("taken": the name
        is recorded with another base or path; "limit": its base holds ``per_model_limit``
        already) or None, and the state. Adding one that is recorded the same way already only
        updates its placement (two routers loading the same adapter at once both succeed)."""
        current = self._adapters.get(adapter.name)
        if current is not None and current != adapter:
            return "taken", self.state()
        if current is None and sum(a.model_id == adapter.model_id for a in self._adapters.values()) >= per_model_limit:
            return "limit", self.state()
        if placement is not None and placement.adapter != adapter.name:
            placement = None  # another adapter's: not this one's to record
        if current is None or (placement is not None and placement != self._placements.get(adapter.name)):
            self._adapters[adapter.name] = adapter
            if placement is not None:  # placements stay among the adapters: bounded with them
                self._placements[adapter.name] = placement
            self.version += 1
        return None, self.state()

    def remove(self, name: str) -> tuple[bool, CatalogState]:
        """Forget ``name``; whether it was recorded, and the state."""
        self._placements.pop(name, None)
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
