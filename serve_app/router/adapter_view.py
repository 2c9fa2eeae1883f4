"""One router replica's view of the app's LoRA adapters: the static ones from the config, and a
copy of the catalog of those added at run time (``serve_app.core.adapter_catalog``), which every
router replica writes its loads and unloads through to.

How stale the copy may be (docs/lora.md states it):

* An adapter loaded through any router replica is served here as soon as that load answered 200:
  a request naming a name this copy does not know reads the catalog before its 404 (one read,
  shared by the requests that arrived before it started).
* An adapter unloaded through another router replica is refused here at most ``max_age_s`` after
  the unload answered (plus one catalog read): the copy serves a run-time adapter only while its
  last read started less than ``max_age_s`` ago, and reads again first otherwise.
* A router replica that starts (or restarts) reads the catalog at its first request naming a
  run-time adapter (or loading, unloading or listing one), so it serves every adapter added before.
* Where a run-time adapter's load went (its ``Placement``) comes with the copy: requests naming
  the adapter carry it (``RelayRequest.adapter_replica``) while it steers, so every router replica's
  replica choice sends them where the adapter is loaded before that replica's stats report it.
* While the catalog cannot be reached, adapters in the copy keep serving (past the bound: logged),
  and a name the copy does not know, a load and an unload get a 503 with Retry-After: the adapter
  may exist, so a 404 would be wrong.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from serve_app.core.adapter_catalog import CatalogState, Placement
from serve_app.core.adapters import AdapterDirectory, AdapterRef, Refusal, not_found
from serve_app.router.adapter_catalog import Catalog
from serve_app.router.errors import OpenAIError

logger = logging.getLogger("serve_app.router")
T = TypeVar("T")
# How old this router replica's copy of the catalog may be when it serves a run-time adapter: the
# longest another router replica's unload can go unseen here. One catalog read per this period
# per router replica while requests name run-time adapters.
VIEW_MAX_AGE_S = 1.0


def catalog_unavailable() -> OpenAIError:
    message = "the catalog of adapters added at run time cannot be reached; retry shortly"
    return OpenAIError(503, message, type="service_unavailable", headers={"Retry-After": "1"})


class AdapterView:
    def __init__(
        self,
        directory: AdapterDirectory,
        catalog: Catalog,
        max_age_s: float = VIEW_MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.catalog = catalog
        self.max_age_s = max_age_s
        self.clock = clock
        self.wall_clock = wall_clock  # placements' times: other router replicas, maybe on other nodes, wrote them
        self._placements: dict[str, Placement] = {}
        self._epoch: str | None = None
        self._version = 0
        self._read_at = -math.inf  # when the read the copy holds started
        self._reads_started = 0
        self._read_held = 0  # the number of the read the copy holds (reads are numbered from 1)
        self._lock = asyncio.Lock()

    @property
    def fresh(self) -> bool:
        return self.clock() - self._read_at < self.max_age_s

    async def find(self, name: str) -> AdapterRef | None:
        """The adapter ``name`` names, or None (a 404), read within the bounds above."""
        known = self.directory.find(name)
        if not self.directory.takes_dynamic or (known is not None and self.directory.is_static(name)):
            return known
        if known is None:
            await self._read(self._reads_started)  # the catalog may know it: read before the 404
        elif not self.fresh:
            await self.current()
        return self.directory.find(name)

    async def current(self) -> None:
        """Read the catalog unless the copy is fresh; the copy as it is when it cannot be reached."""
        if not self.directory.takes_dynamic or self.fresh:
            return
        try:
            await self._read()
        except OpenAIError:
            logger.warning("adapter catalog unreachable; serving adapters from this router's copy", exc_info=True)

    def placed_on(self, adapter: AdapterRef | None) -> str:
        """The model replica a run-time ``adapter``'s load went to, while that steers its requests; "" else."""
        placement = self._placements.get(adapter.name) if adapter is not None and adapter.path else None
        return placement.replica_id if placement is not None and placement.steers(self.wall_clock()) else ""

    async def add(self, name: str, path: str, model_id: str, replica_id: str = "") -> Refusal | None:
        """Record a loaded adapter in the catalog, with the model replica its load went to where
        known; the reason it cannot be, or None."""
        adapter = AdapterRef(name, model_id, path)
        placement = Placement(name, replica_id, self.wall_clock()) if replica_id else None
        limit = self.directory.limit(model_id)
        reason, state = await self._call(lambda: self.catalog.add(adapter, limit, placement))
        await self._take(state)
        return None if reason is None else self.directory.catalog_refusal(reason, name, model_id)

    async def remove(self, name: str) -> Refusal | None:
        """Forget a run-time adapter in the catalog; the reason it cannot be, or None."""
        if (refusal := self.directory.refuse_unload(name)) is not None:
            return refusal
        found, state = await self._call(lambda: self.catalog.remove(name))
        await self._take(state)
        return None if found else not_found(name)

    async def _read(self, seen: int | None = None) -> None:
        """Make the copy hold a read that started after ``seen`` reads had (a caller passes the
        count when it arrived, so a read already started then cannot hide a later change), or
        with ``seen`` None, a fresh one (the read a caller waited for may be that)."""
        async with self._lock:
            if self._read_held > seen if seen is not None else self.fresh:
                return
            self._reads_started += 1
            number, started = self._reads_started, self.clock()
            state = await self._call(lambda: self.catalog.read(self._epoch, self._version))
            if state is not None:
                await self._take(state)
            self._read_held, self._read_at = number, started

    async def _take(self, state: CatalogState) -> None:
        if state.epoch == self._epoch and state.version < self._version:
            return  # an older answer than the copy (a read that crossed a write)
        if self._epoch is not None and state.epoch != self._epoch and state.version == 0:
            # Ray restarted the catalog's actor and it lost its state: give it back what we had.
            if held := self.directory.all_dynamic():
                logger.warning("adapter catalog restarted empty; restoring %d adapters", len(held))
                state = await self._call(lambda: self.catalog.seed(held))
        self.directory.replace_dynamic(state.adapters)
        self._placements = {p.adapter: p for p in state.placements}
        self._epoch, self._version = state.epoch, state.version

    @staticmethod
    async def _call(call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except Exception as err:  # the actor is unreachable or restarting
            raise catalog_unavailable() from err
