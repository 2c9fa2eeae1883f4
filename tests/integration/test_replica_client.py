"""RayReplicaClient against a stand-in for a Ray Serve handle: batch streams of contract events,
cancellation routed to the batch's replica, a replica lost before or after its first event (no Ray
cluster needed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from ray.exceptions import ActorDiedError

from serve_app.replica.contract import (
    BatchOpened,
    CancelRequests,
    Event,
    RelayRequest,
    ResponseBody,
    ResponseEnd,
    ResponseStart,
    Usage,
)
from serve_app.router.client import RayReplicaClient

JSON = ((b"content-type", b"application/json"),)


class _Method:
    def __init__(self, fn: Any) -> None:
        self.remote = fn


class FakeHandle:
    """``stream`` replays one script of messages per call (an exception item is raised there);
    ``cancel`` records what it was sent."""

    def __init__(self, *scripts: list[Any], gate: asyncio.Event | None = None) -> None:
        self.scripts = list(scripts)
        self.calls = 0
        self.gate = gate  # when set, stream waits for it before its first message
        self.cancels: list[CancelRequests] = []
        self.stream = _Method(self._stream)
        self.cancel = _Method(self._cancel)

    def options(self, **_: Any) -> FakeHandle:
        return self

    async def _stream(self, requests: list[RelayRequest]) -> AsyncIterator[Any]:
        script = self.scripts[min(self.calls, len(self.scripts) - 1)]
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        for message in script:
            if isinstance(message, BaseException):
                raise message
            yield message

    async def _cancel(self, request: CancelRequests) -> int:
        self.cancels.append(request)
        return len(request.request_ids)


def _requests() -> list[RelayRequest]:
    return [RelayRequest(rid, "/v1/completions", b"{}") for rid in ("a", "b")]


def _answer(index: int, data: bytes) -> list[Event]:
    return [ResponseStart(index, 200, JSON), ResponseBody(index, data)]


async def _all(stream: AsyncIterator[list[Event]]) -> list[Event]:
    return [event async for events in stream for event in events]


def _bodies(events: list[Event]) -> list[bytes]:
    return [e.data for e in events if isinstance(e, ResponseBody)]


async def test_a_batch_streams_its_events_and_a_leaver_is_cancelled_on_its_replica() -> None:
    steps = [BatchOpened("replica-1"), [*_answer(0, b"x"), *_answer(1, b"y")]]
    handle = FakeHandle([*steps, [ResponseEnd(0, Usage(1, 1, "stop")), ResponseEnd(1, Usage(1, 1, "stop"))]])
    client = RayReplicaClient({"m": handle})
    stream = client.stream("m", _requests())
    first = await anext(stream)
    assert _bodies(first) == [b"x", b"y"], "BatchOpened is the client's business, not its caller's"
    await client.cancel("m", ["a"])
    assert handle.cancels == [CancelRequests("replica-1", ("a",))]
    assert [e.index for e in await _all(stream)] == [0, 1]
    await client.cancel("m", ["a"])  # the batch has ended: nothing to send
    assert len(handle.cancels) == 1


async def test_a_replica_lost_mid_batch_ends_every_request_with_a_503_error() -> None:
    handle = FakeHandle([BatchOpened("replica-1"), _answer(0, b"x"), ActorDiedError()])
    client = RayReplicaClient({"m": handle}, retry_backoff_s=0.0)
    events = await _all(client.stream("m", _requests()))
    assert _bodies(events) == [b"x"]
    ends = [e for e in events if isinstance(e, ResponseEnd)]
    assert [e.index for e in ends] == [0, 1]
    assert all(e.error and e.status == 503 for e in ends)
    assert handle.calls == 1, "a request that has sent bytes cannot be retried"
    await client.cancel("m", ["a", "b"])  # the stream is gone: no call to a dead replica
    assert handle.cancels == []


async def test_a_replica_lost_before_its_first_event_is_retried_elsewhere() -> None:
    answer = [BatchOpened("replica-2"), _answer(0, b"x") + _answer(1, b"y"), [ResponseEnd(0), ResponseEnd(1)]]
    handle = FakeHandle([BatchOpened("replica-1"), ActorDiedError()], answer)
    client = RayReplicaClient({"m": handle}, retry_backoff_s=0.0)
    events = await _all(client.stream("m", _requests()))
    assert handle.calls == 2
    assert _bodies(events) == [b"x", b"y"]
    assert [e.error for e in events if isinstance(e, ResponseEnd)] == [None, None]


async def test_when_every_attempt_is_lost_each_request_ends_with_an_error() -> None:
    handle = FakeHandle([ActorDiedError()])
    client = RayReplicaClient({"m": handle}, max_attempts=3, retry_backoff_s=0.0)
    events = await _all(client.stream("m", _requests()))
    assert handle.calls == 3
    assert [(e.index, e.status) for e in events if isinstance(e, ResponseEnd) and e.error] == [(0, 503), (1, 503)]


async def test_a_client_leaving_before_its_batch_opened_is_cancelled_once_the_replica_is_known() -> None:
    gate = asyncio.Event()
    steps = [BatchOpened("replica-1"), _answer(0, b"x") + _answer(1, b"y"), [ResponseEnd(0), ResponseEnd(1)]]
    handle = FakeHandle(steps, gate=gate)
    client = RayReplicaClient({"m": handle})
    stream = client.stream("m", _requests())
    first = asyncio.create_task(anext(stream))
    await asyncio.sleep(0.01)  # the call is out; no BatchOpened yet
    await client.cancel("m", ["a", "unknown"])
    assert handle.cancels == [], "the replica is not known yet"
    gate.set()
    assert _bodies(await first) == [b"x", b"y"]
    await asyncio.sleep(0.01)
    assert handle.cancels == [CancelRequests("replica-1", ("a",))], "sent once BatchOpened named the replica"
    assert [e.index for e in await _all(stream)] == [0, 1]
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
    handle = FakeHandle([BatchOpened("replica-1"), _answer(0, b"x") + _answer(1, b"y")])
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
    handle = FakeHandle([BatchOpened("replica-1"), _answer(0, b"x")], gate=gate)
    calls: list[HangingCall] = []
    handle.cancel = _Method(lambda request: calls.append(HangingCall()) or calls[-1])
    client = RayReplicaClient({"m": handle}, cancel_timeout_s=0.05)
    stream = client.stream("m", _requests())
    first = asyncio.create_task(anext(stream))
    await asyncio.sleep(0.01)
    await client.cancel("m", ["a"])  # before BatchOpened: sent when the replica is known
    gate.set()
    await first
    sending = set(client._early_cancels)
    assert sending, "the cancel goes out from a task of its own once BatchOpened named the replica"
    await asyncio.wait(sending, timeout=5.0)
    assert len(calls) == 1 and calls[0].withdrawn
    assert not client._early_cancels, "the background cancel ended"
    await stream.aclose()


async def test_a_single_request_is_streamed_without_batch_bookkeeping() -> None:
    handle = FakeHandle([[*_answer(0, b"{}"), ResponseEnd(0, Usage(3, 2, "stop"))]])
    client = RayReplicaClient({"m": handle})
    events = await _all(client.stream("m", _requests()[:1]))
    assert [type(e).__name__ for e in events] == ["ResponseStart", "ResponseBody", "ResponseEnd"]
    assert not client._batch_replica and not client._unopened
