"""Forwards one client request to a replica and relays vLLM's response bytes, JSON or SSE, unchanged.

What the relay adds around those bytes: an admission ticket, one deadline, router batching or a
call of its own, the wait for the first byte (errors and lost replicas before it are ordinary HTTP
answers or a retry), and request metrics. Each of these ends when the request's own response ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

from starlette.responses import Response, StreamingResponse

from serve_app.config_model import BatchingConfig
from serve_app.config_router import AdmissionConfig
from serve_app.core.admission import AdmissionController, AdmissionTicket, Rejection
from serve_app.observability.logs import RequestLog
from serve_app.observability.recorder import ServeAppMetrics, StreamTimer
from serve_app.replica.contract import Event, RelayRequest, ResponseBody, ResponseEnd, ResponseStart
from serve_app.router.batch_dispatch import BatchDispatcher
from serve_app.router.client import ReplicaClient
from serve_app.router.errors import OpenAIError
from serve_app.router.flow_gate import Caller, FlowGate, FlowPass

EventSource = AsyncGenerator[list[Event], None]


def sse_events(data: bytes) -> int:
    """Streamed events in relayed bytes: vLLM sends one per engine step and choice."""
    return data.count(b"data: {")


@dataclass
class _Head:
    """What came before the response is committed: its start, first bytes, maybe its end."""

    start: ResponseStart | None = None
    bodies: list[bytes] = field(default_factory=list)
    end: ResponseEnd | None = None

    @property
    def is_sse(self) -> bool:
        content_type = (
            next((v for k, v in self.start.headers if k.lower() == b"content-type"), b"") if self.start else b""
        )
        return content_type.startswith(b"text/event-stream")


def _ended_early(end: ResponseEnd) -> OpenAIError:
    kind = "service_unavailable" if end.status == 503 else "server_error"
    return OpenAIError(end.status if end.status >= 400 else 502, end.error or "no answer", type=kind)


class Relay:
    """Over the router's admission part and each model's ``batching`` section, by model id
    (built in serve_app.router.models)."""

    def __init__(
        self,
        admission: AdmissionConfig,
        batching: Mapping[str, BatchingConfig],
        client: ReplicaClient,
        metrics: ServeAppMetrics,
        replica_name: str = "local",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.request_timeout_s = admission.request_timeout_s
        self.clock = clock  # monotonic seconds: deadlines, queue waits, token timings
        self.client = client
        self.metrics = metrics
        self.replica_name = replica_name  # this router replica: the label of its admission gauges
        self.flow: FlowGate | None = None  # flow control (tenants, quotas, classes) when configured
        self.admission = AdmissionController.from_config(admission)
        self._batchers = {
            model_id: BatchDispatcher(client, model_id, section, metrics, clock)
            for model_id, section in batching.items()
            if section.max_batch_size > 1
        }

    def admit(self, cost: int) -> AdmissionTicket:
        """Bounded admission: past the router's request or token budget, answer 429/503 with
        Retry-After at once instead of queueing without limit."""
        decision = self.admission.try_admit(cost)
        if isinstance(decision, Rejection):
            self.metrics.request_rejected(decision.reason)
            raise OpenAIError(
                decision.status,
                decision.message,
                code=decision.reason,
                type="rate_limit_error" if decision.status == 429 else "service_unavailable",
                headers={"Retry-After": str(decision.retry_after_s)},
            )
        self._record_queue()
        return decision

    def release(self, ticket: AdmissionTicket) -> None:
        if ticket.release():
            self._record_queue()

    def _record_queue(self) -> None:
        self.metrics.router_queue(self.replica_name, self.admission.queued_requests, self.admission.queued_tokens)

    def _source(self, model_id: str, request: RelayRequest, admitted_at: float) -> EventSource:
        batcher = self._batchers.get(model_id)
        if batcher:
            return batcher.stream(request)  # the dispatcher records batch size and queue wait at dispatch
        self.metrics.router_batch(model_id, 1)
        self.metrics.queue_wait(model_id, self.clock() - admitted_at)
        return self.client.stream(model_id, [request])

    async def forward(
        self, model_id: str, request: RelayRequest, log: RequestLog, caller: Caller | None = None
    ) -> Response:
        """The response, once its first bytes are here (or it failed before them). With flow
        control and a ``caller``, the request first passes its quotas and admission queue."""
        deadline = self.clock() + self.request_timeout_s
        flow_pass = None
        if self.flow is not None and caller is not None:
            flow_pass = await self.flow.enter(caller, request.cost_hint, self.request_timeout_s)
        try:
            ticket = self.admit(request.cost_hint)
        except BaseException:
            self._leave(flow_pass, ResponseEnd(0))
            raise
        admitted_at = self.clock()
        source = self._source(model_id, request, admitted_at)
        try:
            head = await self._head(source, deadline)
        except BaseException:
            self.release(ticket)
            self._leave(flow_pass, ResponseEnd(0))
            await source.aclose()
            raise
        assert head.start is not None
        if head.end is not None:  # the whole answer is here (JSON)
            self.release(ticket)
            await source.aclose()
            self._finish(model_id, request.adapter, log, head.end, flow_pass)
            return _response(head.start, b"".join(head.bodies))
        timer = self.metrics.stream_timer(model_id, admitted_at)
        body = self._rest(model_id, request.adapter, head, source, deadline, (ticket, flow_pass), log, timer)
        response = StreamingResponse(body, status_code=head.start.status)
        response.raw_headers = list(head.start.headers)
        return response

    async def _next(self, source: EventSource, deadline: float) -> list[Event]:
        """The source's next message, TimeoutError past the request's deadline. A timeout scope in
        the request's own task: ``asyncio.wait_for`` would run every message's wait in a task of
        its own (two more event-loop passes per streamed message)."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout_at(loop.time() + max(0.0, deadline - self.clock())):
            return await anext(source)

    async def _head(self, source: EventSource, deadline: float) -> _Head:
        head = _Head()
        while True:
            try:
                events = await self._next(source, deadline)
            except TimeoutError:
                raise OpenAIError(504, "the request timed out before the first byte", code="timeout") from None
            except StopAsyncIteration:
                raise OpenAIError(503, "the replica ended the request without an answer") from None
            for event in events:
                if isinstance(event, ResponseStart):
                    head.start = event
                elif isinstance(event, ResponseBody):
                    head.bodies.append(event.data)
                elif isinstance(event, ResponseEnd):
                    if event.error is not None or head.start is None:
                        raise _ended_early(event)
                    head.end = event
            if head.bodies or head.end is not None:
                return head

    async def _rest(
        self,
        model_id: str,
        adapter: str,
        head: _Head,
        source: EventSource,
        deadline: float,
        held: tuple[AdmissionTicket, FlowPass | None],
        log: RequestLog,
        timer: StreamTimer,
    ) -> AsyncIterator[bytes]:
        end = ResponseEnd(0, error="the client left before the end")
        streamed = sse_events(first := b"".join(head.bodies))
        timer.on_tokens(streamed, self.clock())
        try:
            yield first
            while True:
                try:
                    events = await self._next(source, deadline)
                except TimeoutError:
                    end = ResponseEnd(0, error="the request timed out", status=504)
                    break
                except StopAsyncIteration:
                    end = ResponseEnd(0, error="the replica ended the stream without its end", status=502)
                    break
                data = b"".join(e.data for e in events if isinstance(e, ResponseBody))
                if data:
                    streamed += sse_events(data)
                    timer.on_tokens(streamed, self.clock())
                    yield data
                ends = [e for e in events if isinstance(e, ResponseEnd)]
                if ends:
                    end = ends[0]
                    break
            if end.error is not None and head.is_sse:
                # A failure after the first byte: an explicit error event and [DONE], never a silent cut.
                log.error = end.error
                error = OpenAIError(end.status if end.status >= 400 else 502, end.error)
                yield (error.sse_event() + "data: [DONE]\n\n").encode()
        finally:
            self.release(held[0])
            timer.finish()
            await source.aclose()
            self._finish(model_id, adapter, log, end, held[1])

    def _leave(self, flow_pass: FlowPass | None, end: ResponseEnd) -> None:
        """Settles the quota on what the request actually used (prompt + completion)."""
        if flow_pass is not None and self.flow is not None:
            self.flow.leave(flow_pass, end.usage.prompt_tokens, end.usage.completion_tokens)

    def _finish(
        self, model_id: str, adapter: str, log: RequestLog, end: ResponseEnd, flow_pass: FlowPass | None = None
    ) -> None:
        self._leave(flow_pass, end)
        usage = end.usage
        log.prompt_tokens, log.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        log.finish_reason = usage.finish_reason
        self.metrics.request_tokens(model_id, usage.prompt_tokens, usage.completion_tokens)
        if adapter:  # only names the router serves reach here (serve_app.core.adapters)
            self.metrics.adapter_request(model_id, adapter, usage.prompt_tokens, usage.completion_tokens)


def _response(start: ResponseStart, body: bytes) -> Response:
    response = Response(body, status_code=start.status)
    response.raw_headers = list(start.headers)
    return response
