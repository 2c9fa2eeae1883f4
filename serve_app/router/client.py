"""How the router reaches replicas: through Ray Serve handles, or in-process for unit tests."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Mapping
from typing import Any, Protocol

from serve_app.replica.contract import BatchOpened, CancelRequests, Event, RelayRequest, ResponseEnd

logger = logging.getLogger("serve_app.router")


class ReplicaClient(Protocol):
    def stream(self, model: str, requests: list[RelayRequest]) -> AsyncGenerator[list[Event], None]:
        """The events of every request in ``requests`` (tagged with its index), a list per replica
        message. A replica lost before the first event is retried elsewhere; after it, every
        request gets a ``ResponseEnd`` with an error."""
        ...

    async def cancel(self, model: str, request_ids: list[str]) -> None:
        """Abort requests of running batches (``stream`` with several requests) whose clients
        went away; ids of requests that already ended are ignored."""
        ...

    async def probe(self, model: str, prompt: str) -> str: ...


def _replica_lost_errors() -> tuple[type[BaseException], ...]:
    from ray import exceptions as rex

    names = ("ActorDiedError", "ActorUnavailableError", "RayActorError", "WorkerCrashedError", "NodeDiedError")
    return tuple(getattr(rex, n) for n in names if hasattr(rex, n))


def lost(requests: list[RelayRequest], message: str) -> list[Event]:
    return [ResponseEnd(i, error=message, status=503) for i in range(len(requests))]


class RayReplicaClient:
    """Calls replica deployments through Ray Serve handles (Ray Serve keeps replica tracking and
    routing; the replica choice is a RequestRouter attached to the replica deployment)."""

    def __init__(
        self,
        handles: Mapping[str, Any],
        max_attempts: int = 3,
        retry_backoff_s: float = 0.2,
        cancel_timeout_s: float = 30.0,
    ) -> None:
        self.handles = {model: handle.options(stream=True) for model, handle in handles.items()}
        self.unary = dict(handles)
        self.max_attempts = max_attempts
        self.retry_backoff_s = retry_backoff_s
        # A cancel call waits in Ray's handle queue while no replica of the model is up; past
        # this it is withdrawn (the batch frees its slots when it ends anyway).
        self.cancel_timeout_s = cancel_timeout_s
        self._lost = _replica_lost_errors()
        self._batch_replica: dict[str, str] = {}  # request id of a running batch -> its replica
        # Request ids of batches sent whose replica is not known yet (no BatchOpened so far), and
        # those of them whose clients left already: cancelled as soon as the replica is known.
        self._unopened: set[str] = set()
        self._cancel_on_open: set[str] = set()
        self._early_cancels: set[asyncio.Task[None]] = set()

    async def stream(self, model: str, requests: list[RelayRequest]) -> AsyncGenerator[list[Event], None]:
        for attempt in range(1, self.max_attempts + 1):
            started = False
            try:
                async for events in self._events(model, requests):
                    started = True
                    yield events
                return
            except self._lost as err:
                if started:
                    logger.warning("replica lost mid-stream for %s: %s", requests[0].request_id, err)
                    yield lost(requests, "the replica serving this request failed")
                    return
                logger.warning("replica lost before first byte (attempt %d/%d): %s", attempt, self.max_attempts, err)
                await asyncio.sleep(self.retry_backoff_s * attempt)
        yield lost(requests, "no replica could serve the request; retry later")

    async def _events(self, model: str, requests: list[RelayRequest]) -> AsyncIterator[list[Event]]:
        ids = [r.request_id for r in requests]
        if len(ids) > 1:
            self._unopened.update(ids)

        def opened(message: BatchOpened) -> None:
            self._unopened.difference_update(ids)
            self._batch_replica.update((rid, message.replica_id) for rid in ids)
            if early := [rid for rid in ids if rid in self._cancel_on_open]:
                # From a callback of the stream: a task of its own sends the cancel (routed by
                # _batch_replica, just filled), in an empty context so it carries no request's id.
                self._cancel_on_open.difference_update(early)
                spawn_detached(cancel_logged(self, model, early), self._early_cancels)

        try:
            async for events in replica_events(self.handles[model].stream.remote(requests), opened):
                yield events
        finally:
            if len(ids) > 1:
                for rid in ids:
                    self._batch_replica.pop(rid, None)
                    self._unopened.discard(rid)
                    self._cancel_on_open.discard(rid)

    async def cancel(self, model: str, request_ids: list[str]) -> None:
        by_replica: dict[str, list[str]] = {}
        for rid in request_ids:
            if (replica_id := self._batch_replica.get(rid)) is not None:
                by_replica.setdefault(replica_id, []).append(rid)
            elif rid in self._unopened:  # its batch's replica is not known yet: cancel on BatchOpened
                self._cancel_on_open.add(rid)
        for replica_id, ids in by_replica.items():
            call = self.unary[model].cancel.remote(CancelRequests(replica_id, tuple(ids)))
            await _bounded(call, self.cancel_timeout_s)

    async def probe(self, model: str, prompt: str) -> str:
        answer: str = await self.unary[model].probe.remote(prompt)
        return answer


async def replica_events(
    messages: AsyncIterator[Any], on_opened: Callable[[BatchOpened], None] | None = None
) -> AsyncIterator[list[Event]]:
    """The event lists of a ``LLMReplica.stream``; a ``BatchOpened`` goes to ``on_opened``."""
    async for message in messages:
        if isinstance(message, BatchOpened):
            if on_opened is not None:
                on_opened(message)
            continue
        yield message


async def _bounded(call: Any, timeout_s: float) -> None:
    """Await a handle call for at most ``timeout_s``; past it, withdraw the call and raise TimeoutError."""
    try:
        await asyncio.wait_for(call, timeout_s)
    except TimeoutError:
        withdraw = getattr(call, "cancel", None)
        if callable(withdraw):
            with contextlib.suppress(Exception):
                withdraw()
        raise


def spawn_detached(work: Coroutine[Any, Any, None], keep: set[asyncio.Task[None]]) -> None:
    """Run ``work`` as a task of its own, referenced in ``keep`` until done, in an empty context:
    it serves no single request, and a Ray call made in a request's context carries that
    request's id into Ray (see AsyncBatcher._spawn)."""
    task = asyncio.get_running_loop().create_task(work, context=contextvars.Context())
    keep.add(task)
    task.add_done_callback(keep.discard)


async def cancel_logged(client: ReplicaClient, model: str, request_ids: list[str]) -> None:
    """``client.cancel``, a failure logged rather than raised: the batch ends anyway, and its
    engine slots are freed then."""
    try:
        await client.cancel(model, request_ids)
    except Exception as err:
        logger.warning("cancelling %d requests of a batch failed: %r", len(request_ids), err)


class LocalReplicaClient:
    """In-process replicas (``LLMReplica`` objects with a fake engine) for fast tests of the router."""

    def __init__(self, replicas: Mapping[str, Any]) -> None:
        self.replicas = dict(replicas)

    async def stream(self, model: str, requests: list[RelayRequest]) -> AsyncGenerator[list[Event], None]:
        async for events in replica_events(self.replicas[model].stream(requests)):
            yield events

    async def cancel(self, model: str, request_ids: list[str]) -> None:
        replica = self.replicas[model]
        await replica.cancel(CancelRequests(replica.replica_name, tuple(request_ids)))

    async def probe(self, model: str, prompt: str) -> str:
        answer: str = await self.replicas[model].probe(prompt)
        return answer
