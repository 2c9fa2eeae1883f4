"""The HTTP ingress: OpenAI-compatible routes, ``/generate``, ``/health`` and ``/ready``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from serve_app.core.coalesce import drained
from serve_app.engine.types import EmbeddingRequest as EngineEmbeddingRequest
from serve_app.engine.types import GenerationChunk, GenerationRequest, merge_chunks
from serve_app.observability.logs import RequestLog
from serve_app.router.body_limit import BodySizeLimit
from serve_app.router.errors import OpenAIError, install_error_handlers
from serve_app.router.head_limits import RequestHeadLimits
from serve_app.router.openai_types import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    GenerateRequest,
    model_card,
)
from serve_app.router.request_identity import RequestIdentity
from serve_app.router.security import install_cors, install_security
from serve_app.router.service import RouterService
from serve_app.router.translate import (
    ChoiceState,
    StreamFormatter,
    chat_response,
    completion_response,
    engine_requests,
    generate_request,
    new_id,
)


def build_fastapi(service: RouterService) -> FastAPI:
    app = FastAPI(title="serve-app", version="0.1.0")
    install_error_handlers(app)
    server = service.config.server
    # Middleware added later runs earlier: CORS, request id, head limits, body cap, then keys and rate limits.
    install_security(app, service.config, service.metrics.request_rejected)  # reads the API keys, once
    app.add_middleware(BodySizeLimit, max_bytes=server.max_body_bytes)
    app.add_middleware(RequestHeadLimits, max_header_bytes=server.max_header_bytes, max_headers=server.max_headers)
    app.add_middleware(RequestIdentity, on_finished=service.metrics.request_finished, log_prompts=server.log_prompts)
    created = int(time.time())

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        state = await service.readiness()
        body = {"status": "ready" if state.ready else "not ready", "models": state.detail}
        return JSONResponse(body, status_code=200 if state.ready else 503)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(m.id, created) for m in service.config.models]}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatCompletionRequest, request: Request) -> Any:
        request.state.model = _model_tag(service, body.model)
        return await _completion(service, body, "chat", request.state.log)

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        request.state.model = _model_tag(service, body.model)
        return await _completion(service, body, "completion", request.state.log)

    @app.post("/generate")
    async def generate(body: GenerateRequest, request: Request) -> dict[str, Any]:
        request.state.model = _model_tag(service, body.model)
        model = service.generation_model(body.model)
        engine_request = generate_request(body, model, request.state.request_id)
        request.state.log.note_prompt(body.prompt)
        (state,) = await service.complete(model, [engine_request])
        _note_choices(request.state.log, [state])
        return {
            "text": state.full_text,
            "model": model.id,
            "prompt_tokens": state.prompt_tokens,
            "completion_tokens": state.completion_tokens,
            "finish_reason": state.finish_reason,
        }

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
        request.state.model = _model_tag(service, body.model)
        model = service.model(body.model)
        request.state.log.note_prompt(body.inputs())
        result = await service.embed(model, EngineEmbeddingRequest(request.state.request_id, model.id, body.inputs()))
        request.state.log.prompt_tokens = result.prompt_tokens
        return {
            "object": "list",
            "model": model.id,
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(result.vectors)],
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        }

    install_cors(app, server.cors_allow_origins)
    return app


def _model_tag(service: RouterService, name: str | None) -> str:
    """A metric label: configured model ids only, so clients cannot grow label cardinality."""
    if name is None:
        return service.config.models[0].id  # what RouterService.model() serves without a name
    return name if service.config.model(name) is not None else "unknown"


def _note_choices(log: RequestLog, states: list[ChoiceState]) -> None:
    log.note_choices(
        states[0].prompt_tokens if states else 0,
        [s.completion_tokens for s in states],
        [s.finish_reason for s in states],
        [s.full_text for s in states],
    )


async def _completion(
    service: RouterService, body: ChatCompletionRequest | CompletionRequest, kind: str, log: RequestLog
) -> Any:
    model = service.generation_model(body.model)
    requests = engine_requests(body, model, log.request_id)
    log.note_prompt(_prompt_of(requests[0]))
    rid = new_id("chatcmpl" if kind == "chat" else "cmpl")
    if not body.stream:
        states = await service.complete(model, requests)
        _note_choices(log, states)
        build = chat_response if kind == "chat" else completion_response
        return build(rid, model.id, states)
    # Opening the stream waits for the first chunk: errors before it are ordinary HTTP errors.
    stream = await service.open_stream(model, requests)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    formatter = StreamFormatter(kind, rid, model.id)
    return StreamingResponse(
        _sse(stream, formatter, len(requests), include_usage, log),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _prompt_of(request: GenerationRequest) -> str | list[dict[str, Any]] | None:
    return [dict(m) for m in request.messages] if request.messages is not None else request.prompt


async def _sse(
    stream: AsyncIterator[GenerationChunk], formatter: StreamFormatter, n: int, include_usage: bool, log: RequestLog
) -> AsyncIterator[str]:
    """Each engine chunk is written as soon as it arrives; a failure after the first token ends
    the stream with an explicit error event and ``[DONE]``, never a silent cut."""
    states = [ChoiceState() for _ in range(n)]
    try:
        async for arrived in drained(stream):
            events = []
            for chunk in merge_chunks(arrived):
                states[chunk.index].add(chunk)
                event = formatter.chunk(chunk)
                if event is not None:
                    events.append(event)
            if events:
                yield "".join(events)  # one write (one proxy message) for what arrived together
    except OpenAIError as err:
        log.error = err.code or err.type
        yield err.sse_event()
    else:
        if include_usage:
            yield formatter.usage_event(states)
    finally:
        _note_choices(log, states)  # what was sent, also when the client left early
    yield formatter.done()
