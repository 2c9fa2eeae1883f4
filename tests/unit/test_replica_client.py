"""RayReplicaClient against a stand-in for a Ray Serve handle: batch streams, cancellation, a
replica lost mid-batch (no Ray cluster needed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from ray.exceptions import ActorDiedError

from serve_app.engine.types import BatchOpened, CancelRequests, GenerationChunk, GenerationRequest, SamplingOptions
from serve_app.router.client import RayReplicaClient


class _Method:
    def __init__(self, fn: Any) -> None:
        self.remote = fn


class FakeHandle:
    """``generate_batch`` replays ``messages`` (raising an exception item); ``cancel`` records."""

    def __init__(self, messages: list[Any], gate: asyncio.Event | None = None) -> None:
        self.messages = messages
        self.gate = gate  # when set, generate_batch waits for it before its first message
        self.cancels: list[CancelRequests] = []
        self.generate_batch = _Method(self._generate_batch)
        self.cancel = _Method(self._cancel)

    def options(self, **_: Any) -> FakeHandle:
        return self

    async def _generate_batch(self, requests: list[GenerationRequest]) -> AsyncIterator[Any]:
        if self.gate is not None:
            await self.gate.wait()
        for message in self.messages:
            if isinstance(message, BaseException):
                raise message
            yield message

    async def _cancel(self, request: CancelRequests) -> int:
        self.cancels.append(request)
        return len(request.request_ids)


def _requests() -> list[GenerationRequest]:
    return [GenerationRequest(rid, "m", SamplingOptions(max_tokens=8), prompt="p") for rid in ("a", "b")]


async def test_a_batch_stream_is_flattened_and_a_leaver_is_cancelled_on_its_replica() -> None:
    steps = [BatchOpened("replica-1"), [GenerationChunk(index=0, text="x"), GenerationChunk(index=1, text="y")]]
    handle = FakeHandle([*steps, [GenerationChunk(index=1, text="z", finish_reason="stop")]])
    client = RayReplicaClient({"m": handle})
    stream = client.stream("m", _requests())
    assert [c.text for c in [await anext(stream), await anext(stream)]] == ["x", "y"]
    await client.cancel("m", ["a"])
    assert handle.cancels == [CancelRequests("replica-1", ("a",))]
    assert [c.text async for c in stream] == ["z"]
    await client.cancel("m", ["a"])  # the batch has ended: nothing to send
    assert len(handle.cancels) == 1


async def test_a_replica_lost_mid_batch_fails_every_request_with_503() -> None:
    handle = FakeHandle([BatchOpened("replica-1"), [GenerationChunk(index=0, text="x")], ActorDiedError()])
    client = RayReplicaClient({"m": handle})
    chunks = [c async for c in client.stream("m", _requests())]
    assert chunks[0].text == "x"
    errors = [c.error for c in chunks[1:]]
    assert [c.index for c in chunks[1:]] == [0, 1]
    assert all(e is not None and e.status == 503 and e.code == "replica_unavailable" for e in errors)
    await client.cancel("m", ["a", "b"])  # the stream is gone: no call to a dead replica
    assert handle.cancels == []


async def test_a_client_leaving_before_its_batch_opened_is_cancelled_once_the_replica_is_known() -> None:
    gate = asyncio.Event()
    chunks = [GenerationChunk(index=0, text="x"), GenerationChunk(index=1, text="y")]
    handle = FakeHandle([BatchOpened("replica-1"), chunks, [GenerationChunk(index=1, finish_reason="stop")]], gate)
    client = RayReplicaClient({"m": handle})
    stream = client.stream("m", _requests())
    first = asyncio.create_task(anext(stream))
    await asyncio.sleep(0.01)  # the call is out; no BatchOpened yet
    await client.cancel("m", ["a", "unknown"])
    assert handle.cancels == [], "the replica is not known yet"
    gate.set()
    assert (await first).text == "x"
    await asyncio.sleep(0.01)
    assert handle.cancels == [CancelRequests("replica-1", ("a",))], "sent once BatchOpened named the replica"
    assert [c.finish_reason async for c in stream] == [None, "stop"]
    assert not client._cancel_on_open and not client._unopened  # nothing kept after the batch


class HangingCall:
    """A handle call that no replica ever takes (the model has none up); ``cancel`` withdraws it."""

    def __init__(self) -> None:
        self.withdrawn = False

    def __await__(self) -> Any:
        return asyncio.Event().wait().__await__()

    def cancel(self) -> None:
        self.withdrawn = True


async def test_a_cancel_call_no_replica_takes_is_withdrawn_after_its_timeout() -> None:
    steps = [BatchOpened("replica-1"), [GenerationChunk(index=0, text="x"), GenerationChunk(index=1, text="y")]]
    handle = FakeHandle(steps)
    calls: list[HangingCall] = []
    handle.cancel = _Method(lambda request: calls.append(HangingCall()) or calls[-1])
    client = RayReplicaClient({"m": handle}, cancel_timeout_s=0.05)
    stream = client.stream("m", _requests())
    await anext(stream)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.cancel("m", ["a"]), timeout=2.0)  # bounded by the client, not here
    assert len(calls) == 1 and calls[0].withdrawn
    await stream.aclose()


async def test_an_early_cancel_no_replica_takes_is_withdrawn_in_the_background() -> None:
    gate = asyncio.Event()
    handle = FakeHandle([BatchOpened("replica-1"), [GenerationChunk(index=0, text="x")]], gate)
    calls: list[HangingCall] = []
    handle.cancel = _Method(lambda request: calls.append(HangingCall()) or calls[-1])
    client = RayReplicaClient({"m": handle}, cancel_timeout_s=0.05)
    stream = client.stream("m", _requests())
    first = asyncio.create_task(anext(stream))
    await asyncio.sleep(0.01)
    await client.cancel("m", ["a"])  # before BatchOpened: sent when the replica is known
    gate.set()
    await first
    await asyncio.sleep(0.2)
    assert len(calls) == 1 and calls[0].withdrawn
    assert not client._early_cancels, "the background cancel ended"
    await stream.aclose()
