"""Request handling behind the HTTP routes: model lookup, deadlines, streams and readiness.

Kept apart from FastAPI so that it can be driven in-process with fake replicas.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from serve_app.config import AppConfig, ModelConfig
from serve_app.core.admission import AdmissionController, AdmissionTicket, Rejection
from serve_app.engine.types import EmbeddingRequest, EmbeddingResult, GenerationChunk, GenerationRequest
from serve_app.observability.recorder import ServeAppMetrics, StreamTimer
from serve_app.router.batch_dispatch import BatchDispatcher
from serve_app.router.client import ReplicaClient
from serve_app.router.errors import OpenAIError
from serve_app.router.translate import ChoiceState

_READY_CACHE_S = 5.0


@dataclass
class ReadinessState:
    checked_at: float = 0.0
    ready: bool = False
    detail: dict[str, str] = field(default_factory=dict)


class RouterService:
    def __init__(
        self,
        config: AppConfig,
        client: ReplicaClient,
        metrics: ServeAppMetrics | None = None,
        replica_name: str = "local",
    ) -> None:
        self.config = config
        self.client = client
        self.metrics = metrics or ServeAppMetrics.disabled()
        # This router replica's id: the label of its admission-queue gauges.
        self.replica_name = replica_name
        self._readiness = ReadinessState()
        self._readiness_lock = asyncio.Lock()
        self.admission = AdmissionController.from_config(config.router)
        self._batchers = {
            m.id: BatchDispatcher(client, m, self.metrics) for m in config.models if m.batching.max_batch_size > 1
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

    def _source(
        self, model: ModelConfig, requests: list[GenerationRequest], admitted_at: float
    ) -> AsyncIterator[GenerationChunk]:
        batcher = self._batchers.get(model.id)
        if batcher:
            return batcher.stream(requests)  # the dispatcher records batch size and queue wait at dispatch
        # Unbatched: the request goes out at once, as a batch of its own choices.
        self.metrics.router_batch(model.id, len(requests))
        self.metrics.queue_wait(model.id, time.monotonic() - admitted_at)
        return self.client.stream(model.id, requests)

    def model(self, name: str | None) -> ModelConfig:
        if name is None:
            return self.config.models[0]
        found = self.config.model(name)
        if found is None:
            raise OpenAIError(404, f"The model {name!r} does not exist", param="model", code="model_not_found")
        return found

    def generation_model(self, name: str | None) -> ModelConfig:
        model = self.model(name)
        if model.task != "generate":
            raise OpenAIError(400, f"model {model.id!r} serves embeddings, not completions", param="model")
        return model

    def _deadline(self) -> float:
        return time.monotonic() + self.config.router.request_timeout_s

    async def open_stream(
        self, model: ModelConfig, requests: list[GenerationRequest]
    ) -> AsyncIterator[GenerationChunk]:
        """Start the choices' streams and wait for the first chunk, so that errors before the first
        token become a plain HTTP error (and lost replicas a transparent retry)."""
        ticket = self.admit(sum(r.cost_hint for r in requests))
        admitted_at = time.monotonic()
        timer = self.metrics.stream_timer(model.id, admitted_at)
        deadline = self._deadline()
        stream = self._source(model, requests, admitted_at).__aiter__()
        try:
            first = await asyncio.wait_for(anext(stream), timeout=max(0.0, deadline - time.monotonic()))
            if first.error is not None:
                raise OpenAIError.from_request_error(first.error)
        except TimeoutError:
            self.release(ticket)
            await stream.aclose()
            raise OpenAIError(504, "the request timed out before the first token", code="timeout") from None
        except StopAsyncIteration:
            self.release(ticket)
            raise OpenAIError(503, "the replica ended the stream without output", type="service_unavailable") from None
        except BaseException:
            self.release(ticket)
            await stream.aclose()
            raise
        return self._continue(model.id, first, stream, deadline, ticket, timer)

    async def _continue(
        self,
        model_id: str,
        first: GenerationChunk,
        rest: AsyncIterator[GenerationChunk],
        deadline: float,
        ticket: AdmissionTicket,
        timer: StreamTimer,
    ) -> AsyncIterator[GenerationChunk]:
        completion: dict[int, int] = {}
        try:
            completion[first.index] = first.completion_tokens
            timer.on_tokens(sum(completion.values()), time.monotonic())
            yield first
            while True:
                remaining = deadline - time.monotonic()
                try:
                    chunk = await asyncio.wait_for(anext(rest), timeout=max(0.0, remaining))
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise OpenAIError(504, "the request timed out", code="timeout") from None
                if chunk.error is not None:
                    raise OpenAIError.from_request_error(chunk.error)
                completion[chunk.index] = chunk.completion_tokens
                timer.on_tokens(sum(completion.values()), time.monotonic())
                yield chunk
        finally:
            timer.finish()
            self.metrics.request_tokens(model_id, first.prompt_tokens, sum(completion.values()))
            self.release(ticket)
            await rest.aclose()

    async def complete(self, model: ModelConfig, requests: list[GenerationRequest]) -> list[ChoiceState]:
        states = [ChoiceState() for _ in requests]
        async for chunk in await self.open_stream(model, requests):
            states[chunk.index].add(chunk)
        return states

    async def embed(self, model: ModelConfig, request: EmbeddingRequest) -> EmbeddingResult:
        if model.task != "embed":
            raise OpenAIError(400, f"model {model.id!r} does not serve embeddings", param="model")
        ticket = self.admit(request.cost_hint)
        admitted_at = time.monotonic()
        batcher = self._batchers.get(model.id)
        if batcher:
            call = batcher.embed(request)  # the dispatcher records batch size and queue wait at dispatch
        else:
            self.metrics.router_batch(model.id, 1)
            self.metrics.queue_wait(model.id, time.monotonic() - admitted_at)
            call = self.client.embed(model.id, request)
        try:
            result = await asyncio.wait_for(call, timeout=self.config.router.request_timeout_s)
        except TimeoutError:
            raise OpenAIError(504, "the request timed out", code="timeout") from None
        finally:
            self.release(ticket)
        if result.error is not None:
            raise OpenAIError.from_request_error(result.error)
        return result

    async def readiness(self) -> ReadinessState:
        """Every model must answer a real short greedy generation (cached briefly: probes cost work)."""
        async with self._readiness_lock:
            state = self._readiness
            if state.ready and time.monotonic() - state.checked_at < _READY_CACHE_S:
                return state
            results = await asyncio.gather(*(self._probe(m) for m in self.config.models))
            detail = dict(zip((m.id for m in self.config.models), results, strict=True))
            self._readiness = ReadinessState(time.monotonic(), all(v == "ok" for v in detail.values()), detail)
            return self._readiness

    async def _probe(self, model: ModelConfig) -> str:
        if model.autoscaling is not None and model.autoscaling.min_replicas == 0:
            # Scale to zero: a probe is a request, so probing would start a replica and keep it
            # from ever scaling back down. The model serves whenever asked: its requests wait in
            # Ray Serve's handle queue (under admission and the request deadline) while the
            # autoscaler starts a replica (serve_app.core.autoscaling, "cold_start").
            return "ok"
        try:
            answer = await asyncio.wait_for(
                self.client.probe(model.id, model.readiness_prompt), timeout=model.readiness_timeout_s
            )
        except TimeoutError:
            return f"no answer within {model.readiness_timeout_s:g} s"
        except Exception as err:
            return f"probe failed: {type(err).__name__}: {err}"[:300]
        if not answer.strip():
            return "empty answer"
        if model.readiness_expect and model.readiness_expect.lower() not in answer.lower():
            return f"answer {answer[:80]!r} lacks {model.readiness_expect!r}"
        return "ok"
