"""The adapter catalog in its Ray actor (``serve_app.router.adapter_catalog.ray_catalog``), under
router replicas' copies of it (``AdapterView``), without Serve or vLLM: handles made apart find
one actor by name, and after the actor dies Ray restarts it empty and a copy seeds it again. The
same views over an in-process catalog are unit-tested (tests/unit/test_adapter_catalog.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from serve_app.config import ModelConfig
from serve_app.core.adapter_catalog import CatalogState
from serve_app.core.adapters import AdapterDirectory, AdapterRef
from serve_app.router.adapter_catalog import ray_catalog
from serve_app.router.adapter_view import AdapterView

pytestmark = pytest.mark.integration

MODEL = ModelConfig.model_validate({"id": "m", "lora": {"dynamic": True}})


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def router_view() -> AdapterView:
    """A router replica's copy, read again at every request (no staleness: the test's own steps)."""
    return AdapterView(AdapterDirectory([MODEL]), ray_catalog("test-app"), max_age_s=0.0)


async def next_epoch(actor: Any, epoch: str) -> CatalogState:
    """The actor's state once Ray restarted it (the kill lands a moment after ``ray.kill``)."""
    for _ in range(600):
        state: CatalogState = await actor.state.remote()
        if state.epoch != epoch:
            return state
        await asyncio.sleep(0.1)
    raise TimeoutError("the catalog actor was not restarted within 60 s")


@pytest.mark.usefixtures("ray_session")
def test_router_replicas_share_the_catalog_actor_and_it_comes_back_after_dying() -> None:
    import ray

    async def scenario() -> None:
        first, second = router_view(), router_view()
        assert await second.find("d") is None
        assert await first.add("d", "/d", "m") is None
        assert await second.find("d") == AdapterRef("d", "m", "/d")
        actor = first.catalog.actor
        epoch = (await actor.state.remote()).epoch
        ray.kill(actor, no_restart=False)
        restarted = await next_epoch(actor, epoch)
        assert restarted.epoch != epoch and restarted.version == 0 and restarted.adapters == ()  # empty
        assert await first.find("d") == AdapterRef("d", "m", "/d")  # read from the restarted actor, seeded
        assert await router_view().find("d") == AdapterRef("d", "m", "/d")  # a router replica started now
        assert await second.remove("d") is None
        assert await first.find("d") is None

    asyncio.run(scenario())
