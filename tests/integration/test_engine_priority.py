"""vLLM's priority scheduling on the real stack (Ray Serve, the shipped door, vLLM on CPU): with
``scheduling_policy: priority`` the router's class reaches the engine as each request's
``priority``, so an interactive request overtakes batch requests waiting in the engine's queue,
and a batch client's own ``priority: -100`` does not lift it (the router overwrites it).

The engine runs one sequence at a time (``max_num_seqs: 1``) and flow control lets every request
through to it, so the order is the engine's alone: without the router's priority the batch
requests' -100 would put them first, and under fcfs the interactive request would end last."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from typing import Any

import httpx

from serve_app.config import load_config
from tests.integration.conftest import LOCAL_CONFIG, RunningApp, app_args_from_serve_file

KEYS = {"batch": "sk-prio-batch-0123456789abcdef", "interactive": "sk-prio-interactive-0123456789ab"}
MODEL = "smollm2-135m-instruct"
LONG = {"model": MODEL, "prompt": "Tell me a long story.", "max_tokens": 128, "ignore_eos": True, "temperature": 0}
SHORT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0}


def priority_config() -> Any:
    args = app_args_from_serve_file(LOCAL_CONFIG)
    args["models"][0] |= {"max_model_len": 512, "engine_options": {"scheduling_policy": "priority", "max_num_seqs": 1}}
    tenants = [
        {"name": name, "api_key_sha256": [hashlib.sha256(key.encode()).hexdigest()], "priority": name}
        for name, key in KEYS.items()
    ]
    args["flow_control"] = {"tenants": tenants, "max_in_flight": 16}
    return load_config(args)


async def post(client: httpx.AsyncClient, key: str, path: str, body: dict[str, Any], ends: dict[str, float]) -> None:
    resp = await client.post(path, json=body, headers={"Authorization": f"Bearer {KEYS[key]}"})
    assert resp.status_code == 200, resp.text
    ends[f"{key}-{len(ends)}" if key == "batch" else key] = time.monotonic()


async def running_first(client: httpx.AsyncClient, running: asyncio.Event) -> float:
    """A batch request streamed; ``running`` is set at its first token: it holds the engine's one
    sequence from then on."""
    headers = {"Authorization": f"Bearer {KEYS['batch']}"}
    async with client.stream("POST", "/v1/completions", json=LONG | {"stream": True}, headers=headers) as resp:
        assert resp.status_code == 200
        async for chunk in resp.aiter_bytes():
            if b"data: {" in chunk:
                running.set()
    return time.monotonic()


async def order(base_url: str) -> dict[str, float]:
    ends: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
        running = asyncio.Event()
        first = asyncio.create_task(running_first(client, running))
        await asyncio.wait_for(running.wait(), timeout=60)
        asking_first = LONG | {"priority": -100}  # a batch client asking for the head of the queue
        waiting = [asyncio.create_task(post(client, "batch", "/v1/completions", asking_first, ends)) for _ in range(2)]
        await asyncio.sleep(0.5)  # both reach the engine's queue
        await post(client, "interactive", "/v1/chat/completions", SHORT, ends)
        ends["batch-running"] = await first
        await asyncio.gather(*waiting)
    return ends


def test_the_interactive_class_overtakes_batch_in_the_engines_queue(
    serve_app_factory: Callable[..., RunningApp],
) -> None:
    app = serve_app_factory(priority_config())
    ends = asyncio.run(order(app.base_url))
    ranked = sorted(ends, key=ends.__getitem__)
    print(f"\nend order: {ranked}")
    assert ranked[0] == "batch-running", "the running request is not preempted for a free sequence slot"
    assert ranked[1] == "interactive", f"interactive ended after a batch request that waited before it: {ranked}"
