"""``POST /v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` on the router: vLLM's routes and
bodies, for a model whose ``lora.dynamic`` is on, behind the same API keys as every other route.

A load is relayed to one replica of the base: the one adapter affinity places the adapter on, which
the router then remembers (``serve_app.core.replica_choice``), so the requests after it go there.
vLLM's own ``/v1/load_lora_adapter`` loads it (after the replica checked the folder, its rank and its
shapes: a bad adapter is a 400, never a broken replica); once vLLM answered 200 the router records the
name in the app's catalog, which every router replica reads (``serve_app.router.adapter_view``), with
the replica that loaded it (named on its answer), and every later request naming it carries its
path, so a replica that lacks it loads it first (``serve_app.replica.adapters``), and for a while
that replica, so every router replica sends it there before the replica's own stats report it.
An unload removes the name from the catalog: requests naming it get a 404 at once through this router
replica, and through the others within the bound ``serve_app.router.adapter_view`` states.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from serve_app.core.adapters import Refusal
from serve_app.replica.contract import LOADED_ON_HEADER, RelayRequest
from serve_app.router.errors import OpenAIError

if TYPE_CHECKING:
    from serve_app.router.models import ModelDirectory
    from serve_app.router.relay import Relay

LOAD_PATH = "/v1/load_lora_adapter"
UNLOAD_PATH = "/v1/unload_lora_adapter"


class LoadAdapter(BaseModel):
    """vLLM's load body; ``model`` names the base when the app serves several."""

    model_config = ConfigDict(extra="forbid")
    lora_name: str = Field(..., min_length=1, max_length=128)
    lora_path: str = Field(..., min_length=1, max_length=4096)
    model: str | None = Field(None, min_length=1, max_length=256)


class UnloadAdapter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str = Field(..., min_length=1, max_length=128)


def load_request(request_id: str, name: str, path: str) -> RelayRequest:
    """The load relayed to a replica: vLLM's body, which the replica checks and hands to vLLM."""
    load = {"lora_name": name, "lora_path": path}
    return RelayRequest(request_id, LOAD_PATH, json.dumps(load).encode(), loads_adapter=name)


def install_adapter_routes(app: FastAPI, models: ModelDirectory, relay: Relay) -> None:
    view = models.adapters

    @app.post(LOAD_PATH, response_model=None)
    async def load_adapter(body: LoadAdapter, request: Request) -> Response:
        name, path = body.lora_name, body.lora_path
        model, _ = await models.find(body.model)
        request.state.model = model.id
        await view.current()
        _raise(view.directory.refuse_load(name, path, model.id))
        # Placed like the adapter's requests (see load_request), so they find it where it loaded.
        answer = await relay.forward(
            model.id, load_request(str(request.state.request_id), name, path), request.state.log
        )
        loaded_on = _take_loaded_on(answer)
        if answer.status_code == 200:
            # The catalog decides between loads of one name through several router replicas at once.
            _raise(await view.add(name, path, model.id, loaded_on))
        return answer

    @app.post(UNLOAD_PATH, response_model=None)
    async def unload_adapter(body: UnloadAdapter) -> Response:
        name = body.lora_name
        _raise(await view.remove(name))
        return Response(f"Success: LoRA adapter '{name}' removed successfully.", status_code=200)


def _take_loaded_on(answer: Response) -> str:
    """The replica a load's answer names (LOADED_ON_HEADER), dropped from the answer: clients get
    vLLM's answer."""
    named = [v for k, v in answer.raw_headers if k.lower() == LOADED_ON_HEADER]
    answer.raw_headers = [(k, v) for k, v in answer.raw_headers if k.lower() != LOADED_ON_HEADER]
    return named[0].decode(errors="replace") if named else ""


def _raise(refusal: Refusal | None) -> None:
    if refusal is not None:
        raise OpenAIError(refusal.status, refusal.message, param="lora_name", code=refusal.code)
