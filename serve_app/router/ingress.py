"""The HTTP ingress: every route vLLM's OpenAI server has, relayed; plus ``/generate``,
``/v1/models`` over all models, ``/health`` and ``/ready``.

The router reads a request only lightly (serve_app.core.request_facts): the model, for the replica
deployment to send it to; the caps vLLM lacks; the size, for admission and replica choice. vLLM
validates and answers everything else, so its whole API comes through by construction.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from serve_app.config import AppConfig
from serve_app.core.adapters import AdapterDirectory, AdapterRef, reconcile_cards
from serve_app.core.engine_priority import stamp_priority
from serve_app.core.request_facts import check_limits, read_facts
from serve_app.observability.logs import RequestLog
from serve_app.replica.contract import RelayRequest
from serve_app.router.adapter_catalog import Catalog, LocalCatalog
from serve_app.router.adapter_routes import install_adapter_routes
from serve_app.router.adapter_view import AdapterView
from serve_app.router.body_limit import BodySizeLimit
from serve_app.router.errors import OpenAIError, install_error_handlers
from serve_app.router.flow_gate import PRIORITY_HEADER, Caller
from serve_app.router.head_limits import RequestHeadLimits
from serve_app.router.models import ModelDirectory, RoutedModel, adapter_directory, class_pools, routed_models
from serve_app.router.readiness import Readiness
from serve_app.router.relay import Relay
from serve_app.router.request_identity import RequestIdentity
from serve_app.router.security import install_cors, install_security
from serve_app.router.usage_routes import install_usage_routes

JSON_HEADERS = ((b"content-type", b"application/json"),)
# Relayed paths that name themselves in request metrics and logs; any other path a client sends is
# labelled with the catch-all route's template, so clients cannot grow the metrics' label sets.
LABELLED_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})


class GenerateRequest(BaseModel):
    """The simple API: ``POST /generate {prompt, max_new_tokens} -> {text}`` (greedy by default)."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(..., min_length=1)
    max_new_tokens: Annotated[int, Field(ge=1)] = 64
    model: str | None = Field(None, min_length=1, max_length=256)
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0


def parse_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as err:  # RecursionError: nesting past the parser's limit
        raise OpenAIError(400, f"the request body is not valid JSON: {err}"[:300], code="invalid_json") from None
    if not isinstance(payload, dict):
        raise OpenAIError(400, "the request body must be a JSON object", code="invalid_json")
    return payload


def relay_request(
    model: RoutedModel,
    path: str,
    payload: dict[str, Any],
    body: bytes,
    rid: str,
    adapter: AdapterRef | None = None,
    adapter_replica: str = "",
) -> RelayRequest:
    """Check the router's caps, then package the request for the replica, ``body`` as given."""
    facts = read_facts(payload)
    breach = check_limits(facts, model.limits.max_n, model.limits.max_tokens_limit)
    if breach is not None:
        raise OpenAIError(400, breach.message, param=breach.param)
    return RelayRequest(
        rid,
        path,
        body,
        headers=JSON_HEADERS,
        routing_text=facts.routing_text,
        cost_hint=facts.cost(model.limits.default_max_tokens),
        adapter=adapter.name if adapter else "",
        adapter_path=(adapter.path or "") if adapter else "",
        adapter_replica=adapter_replica,
    )


def build_fastapi(
    config: AppConfig,
    relay: Relay,
    readiness: Readiness,
    adapter_catalog: Catalog | None = None,
    adapters: AdapterDirectory | None = None,
) -> FastAPI:
    """The router's HTTP app. ``adapter_catalog``: the app's catalog of run-time LoRA adapters,
    shared by its router replicas (None: one of this router's own); ``adapters``: the directory of
    the config's models and adapters, the one its catalog was chosen by (None: one made here).
    The config is split here: each route and middleware gets only its part."""
    app = FastAPI(title="serve-app", version="0.1.0")
    install_error_handlers(app)
    server = config.server
    directory = adapters if adapters is not None else adapter_directory(config.models)
    view = AdapterView(directory, adapter_catalog or LocalCatalog(), clock=relay.clock)
    models = ModelDirectory(routed_models(config.models), view, class_pools(config))
    metrics = relay.metrics
    # Middleware added later runs earlier: CORS, request id, head limits, body cap, then keys and rate limits.
    tenants = config.flow_control.tenants if config.flow_control else []
    install_security(app, server, tenants, models.all, metrics.request_rejected)  # reads the API keys, once
    app.add_middleware(BodySizeLimit, max_bytes=server.max_body_bytes)
    app.add_middleware(RequestHeadLimits, max_header_bytes=server.max_header_bytes, max_headers=server.max_headers)
    app.add_middleware(RequestIdentity, on_finished=metrics.request_finished, log_prompts=server.log_prompts)
    _install_own_routes(app, models, relay, readiness)
    install_adapter_routes(app, models, relay)  # before the catch-all routes, which would take their paths
    if relay.flow is not None:
        install_usage_routes(app, relay.flow)
    _install_relay_routes(app, models, relay)
    install_cors(app, server.cors_allow_origins)
    return app


def _install_own_routes(app: FastAPI, models: ModelDirectory, relay: Relay, readiness: Readiness) -> None:
    """``/health``, ``/ready``, ``/v1/models`` over all models, and ``/generate``."""

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        state = await readiness.check()
        body = {"status": "ready" if state.ready else "not ready", "models": state.detail}
        return JSONResponse(body, status_code=200 if state.ready else 503)

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        data = []
        view = models.adapters
        await view.current()
        for model in models.all:
            cards = await _model_cards(relay, model, request.state.log)
            data += reconcile_cards(cards, model.id, view.directory) if model.lora else cards
        return {"object": "list", "data": data}

    @app.post("/generate")
    async def generate(body: GenerateRequest, request: Request) -> Response:
        model, _ = await models.find(body.model)
        caller = _caller(relay, request)
        if caller is not None:
            model = models.for_class(model, caller.priority_name)
        request.state.model = model.id
        request.state.log.note_prompt(body.prompt)
        payload = {"model": model.id, "prompt": body.prompt, "max_tokens": _max_new_tokens(body, model)}
        payload["temperature"] = body.temperature
        raw = _with_engine_priority(model, "/v1/completions", payload, json.dumps(payload).encode(), caller)
        forwarded = relay_request(model, "/v1/completions", payload, raw, _rid(request))
        answer = await relay.forward(model.id, forwarded, request.state.log, caller)
        if answer.status_code != 200:
            return answer  # vLLM's own error, unchanged
        completion = json.loads(bytes(answer.body))
        choice, usage = completion["choices"][0], completion.get("usage") or {}
        text = {"text": choice["text"], "model": model.id, "finish_reason": choice.get("finish_reason")}
        return JSONResponse(text | {k: usage.get(k, 0) for k in ("prompt_tokens", "completion_tokens")})


def _install_relay_routes(app: FastAPI, models: ModelDirectory, relay: Relay) -> None:
    """The catch-all routes: every other path goes to the model's vLLM server, unchanged."""

    async def forward_other(path: str, request: Request) -> Response:
        # The model's server decides: its routes answer, a route without this method is a 405
        # with ``Allow``, anything else a 404, as plain vLLM answers them.
        own = _own_methods(app, "/" + path)
        if own:  # a route of the router's own (/generate, /ready, ...) without this method
            allow = ", ".join(sorted(own))
            raise OpenAIError(405, f"{request.method} is not allowed on /{path}", headers={"Allow": allow})
        target = "/" + path + (f"?{request.url.query}" if request.url.query else "")
        body = b"" if request.method == "GET" else await request.body()
        forwarded = RelayRequest(_rid(request), target, body, method=request.method, headers=())
        return await relay.forward(models.default.id, forwarded, request.state.log)

    for method in ("GET", "PUT", "DELETE", "PATCH"):
        app.add_api_route(
            "/{path:path}", forward_other, methods=[method], response_model=None, operation_id=f"relay_{method.lower()}"
        )

    @app.post("/{path:path}", response_model=None)
    async def forward(path: str, request: Request) -> Response:
        if "/" + path in LABELLED_PATHS:
            request.state.route = "/" + path
        body = await request.body()
        payload = parse_object(body)
        name = payload.get("model") if isinstance(payload.get("model"), str) else None
        model, adapter = await models.find(name)
        caller = _caller(relay, request)
        model, payload, body = _in_class_pool(models, model, adapter, caller, payload, body)
        request.state.model = model.id
        log: RequestLog = request.state.log
        log.note_prompt(payload.get("messages", payload.get("prompt", payload.get("input"))))
        placed_on = models.adapters.placed_on(adapter)
        body = _with_engine_priority(model, "/" + path, payload, body, caller)
        forwarded = relay_request(model, "/" + path, payload, body, _rid(request), adapter, placed_on)
        return await relay.forward(model.id, forwarded, log, caller)


def _own_methods(app: FastAPI, path: str) -> set[str]:
    """The methods the router serves itself on ``path`` (its catch-alls excluded)."""
    routes = [r for r in app.routes if isinstance(r, APIRoute) and r.path == path and "{" not in r.path]
    return {method for route in routes for method in route.methods}


def _max_new_tokens(body: GenerateRequest, model: RoutedModel) -> int:
    limit = model.limits.max_tokens_limit
    if "max_new_tokens" not in body.model_fields_set:
        return min(body.max_new_tokens, limit)  # the API's default must not fail on a lower limit
    if body.max_new_tokens > limit:
        message = f"max_new_tokens is {body.max_new_tokens}; this model allows at most {limit}"
        raise OpenAIError(400, message, param="max_new_tokens")
    return body.max_new_tokens


def _caller(relay: Relay, request: Request) -> Caller | None:
    """Who sends a generation request, for flow control: the tenant of its key, its class."""
    if relay.flow is None:
        return None
    return relay.flow.tenants.caller(getattr(request.state, "client", None), request.headers.get(PRIORITY_HEADER))


def _in_class_pool(
    models: ModelDirectory,
    model: RoutedModel,
    adapter: AdapterRef | None,
    caller: Caller | None,
    payload: dict[str, Any],
    body: bytes,
) -> tuple[RoutedModel, dict[str, Any], bytes]:
    """The model, body and payload for the caller's class: a class's ``model_pools`` send a base
    model's requests to another models: entry, whose server knows the model by that entry's id."""
    if caller is None or adapter is not None:
        return model, payload, body
    pooled = models.for_class(model, caller.priority_name)
    if pooled is model:
        return model, payload, body
    payload = payload | {"model": pooled.id}
    return pooled, payload, json.dumps(payload).encode()


def _with_engine_priority(
    model: RoutedModel, path: str, payload: dict[str, Any], body: bytes, caller: Caller | None
) -> bytes:
    """The body with vLLM's ``priority`` set from the caller's class when the model's engine
    schedules by priority (serve_app.core.engine_priority: a client's own value is overwritten);
    otherwise ``body`` unchanged."""
    if not model.priority_scheduling:
        return body
    stamped = stamp_priority(payload, path, caller.priority if caller is not None else None)
    return body if stamped is None else json.dumps(stamped).encode()


def _rid(request: Request) -> str:
    return str(request.state.request_id)


async def _model_cards(relay: Relay, model: RoutedModel, log: RequestLog) -> list[dict[str, Any]]:
    """vLLM's own model cards (with their context length, and any adapters it serves); a model
    scaled to zero is listed from its config instead of being woken up to list itself."""
    if model.scales_to_zero:
        return [{"id": n, "object": "model", "created": int(time.time()), "owned_by": "vllm"} for n in model.names]
    request = RelayRequest(f"{log.request_id}-models-{model.id}", "/v1/models", b"", method="GET")
    answer = await relay.forward(model.id, request, log)
    if answer.status_code != 200:
        raise OpenAIError(503, f"model {model.id!r} could not list itself", type="service_unavailable")
    return list(json.loads(bytes(answer.body))["data"])
