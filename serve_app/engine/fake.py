"""A deterministic in-process engine with a small OpenAI server of its own, for fast unit tests of
the router, the replica and batching. It never stands in for vLLM in integration tests.

Tokens are whitespace-separated words; a reply is a pure function of the prompt. Responses have
vLLM's shapes (JSON, or SSE ending with an optional usage event and ``[DONE]``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable
from types import SimpleNamespace
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from serve_app.engine.types import EngineDeadError, EngineStats

_VOCAB = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta")


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = {400: "BadRequestError", 404: "NotFoundError"}.get(status, "InternalServerError")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}}, status)


def _compact(value: Any) -> str:
    # vLLM writes its stream events as compact JSON (pydantic), which the replica reads counts from.
    return json.dumps(value, separators=(",", ":"))


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _record_usage(request: Request, prompt_tokens: int, completion_tokens: int) -> None:
    """Where vLLM's handlers leave a request's token counts (``request_metadata.final_usage_info``)."""
    usage = SimpleNamespace(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    request.state.request_metadata = SimpleNamespace(final_usage_info=usage)


def _prompt_text(payload: dict[str, Any]) -> str:
    if "messages" in payload:
        return " ".join(str(m.get("content") or "") for m in payload["messages"])
    return str(payload.get("prompt", ""))


class FakeEngine:
    def __init__(
        self,
        max_model_len: int = 2048,
        token_delay_s: float = 0.0,
        fail_on: str | None = None,
        model_id: str = "fake",
        adapters: dict[str, str] | None = None,
    ) -> None:
        self.max_model_len = max_model_len
        self.token_delay_s = token_delay_s
        self.fail_on = fail_on
        self.model_id = model_id
        self.dead = False
        self.running: set[str] = set()
        self.aborted: list[str] = []
        self.started = False
        self.adapters = dict(adapters or {})  # LoRA adapter name -> path, as vLLM's server holds them
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._complete, methods=["POST"]),
                Route("/v1/completions", self._complete, methods=["POST"]),
                Route("/v1/embeddings", self._embed, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/load_lora_adapter", self._load_adapter, methods=["POST"]),  # an operator route too
                Route("/metrics", self._models, methods=["GET"]),  # an operator route the replica hides
            ]
        )

    async def start(self) -> None:
        self.started = True

    def reply(self, prompt: str, max_tokens: int) -> list[str]:
        digest = hashlib.sha256(prompt.encode()).digest() * 8
        return [_VOCAB[b % len(_VOCAB)] for b in digest[:max_tokens]]

    async def _models(self, request: Request) -> Response:
        card = {"id": self.model_id, "object": "model", "owned_by": "vllm", "max_model_len": self.max_model_len}
        loras = [{"id": n, "object": "model", "root": p, "parent": self.model_id} for n, p in self.adapters.items()]
        return JSONResponse({"object": "list", "data": [card, *loras]})

    async def _load_adapter(self, request: Request) -> Response:
        payload = await request.json()
        name, path = payload.get("lora_name"), payload.get("lora_path")
        if name in self.adapters and not payload.get("load_inplace"):
            return _error(400, f"The lora adapter '{name}' has already been loaded.")
        self.adapters[name] = path
        return Response(f"Success: LoRA adapter '{name}' added successfully.", 200)

    async def _embed(self, request: Request) -> Response:
        payload = await request.json()
        inputs = payload.get("input")
        inputs = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
            return _error(400, "input must be a string or a list of strings", "input")
        vectors = [[b / 255 for b in hashlib.sha256(text.encode()).digest()[:8]] for text in inputs]
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        tokens = sum(len(t.split()) for t in inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse({"object": "list", "data": data, "usage": usage})

    async def _complete(self, request: Request) -> Response:
        if self.dead:
            raise EngineDeadError("fake engine is dead")
        payload = await request.json()
        max_tokens = payload.get("max_tokens", 16)
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return _error(400, "max_tokens must be at least 1", "max_tokens")
        prompt = _prompt_text(payload)
        prompt_tokens = len(prompt.split())
        if payload.get("model") in self.adapters:  # an adapter answers differently from the base
            prompt = f"{payload['model']}: {prompt}"
        if prompt_tokens + max_tokens > self.max_model_len:
            return _error(400, f"prompt of {prompt_tokens} tokens exceeds max_model_len", "messages")
        if self.fail_on is not None and self.fail_on in prompt:
            return _error(500, "injected engine failure")
        chat = request.url.path.endswith("chat/completions")
        words = self.reply(prompt, max_tokens)
        if payload.get("stream"):
            events = self._events(request, chat, words, prompt_tokens, payload)
            return StreamingResponse(events, media_type="text/event-stream")
        if not await self._generate_unless_disconnected(request, asyncio.sleep(self.token_delay_s * len(words))):
            return JSONResponse(None)  # what vLLM's with_cancellation answers a client that left
        text = " ".join(words)
        choice = {"index": 0, "message": {"role": "assistant", "content": text}} if chat else {"index": 0, "text": text}
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words)}
        _record_usage(request, prompt_tokens, len(words))
        answer = {
            "id": "fake",
            "model": payload.get("model", self.model_id),
            "choices": [choice | {"finish_reason": "length"}],
        }
        return JSONResponse(answer | {"usage": usage})  # vLLM names the model the request named

    async def _generate_unless_disconnected(self, request: Request, work: Awaitable[None]) -> bool:
        """Run ``work`` as one engine request, aborted when the client disconnects first (as vLLM's
        ``with_cancellation`` does for its non-streaming handlers). True when it finished."""
        request_id = f"fake-{time.monotonic_ns()}"
        self.running.add(request_id)
        generating = asyncio.ensure_future(work)
        disconnected = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait([generating, disconnected], return_when=asyncio.FIRST_COMPLETED)
        finally:
            finished = generating.done()
            self.running.discard(request_id)
            if not finished:  # the client left, or this handler was cancelled
                self.aborted.append(request_id)
            for task in (generating, disconnected):
                task.cancel()
        return finished

    async def _events(
        self, request: Request, chat: bool, words: list[str], prompt_tokens: int, payload: dict[str, Any]
    ) -> AsyncIterator[str]:
        request_id = f"fake-{time.monotonic_ns()}"
        self.running.add(request_id)
        try:
            for i, word in enumerate(words):
                await asyncio.sleep(self.token_delay_s)
                piece = {"delta": {"content": " " + word}} if chat else {"text": " " + word}
                finish = "length" if i == len(words) - 1 else None
                yield f"data: {_compact({'choices': [piece | {'index': 0, 'finish_reason': finish}]})}\n\n"
            if (payload.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words)}
                yield f"data: {_compact({'id': request_id, 'choices': [], 'usage': usage})}\n\n"
            _record_usage(request, prompt_tokens, len(words))
            yield "data: [DONE]\n\n"
        except asyncio.CancelledError:
            self.aborted.append(request_id)
            raise
        finally:
            self.running.discard(request_id)

    async def check_health(self) -> None:
        if self.dead:
            raise EngineDeadError("fake engine is dead")

    def stats(self) -> EngineStats:
        return EngineStats(running=len(self.running))

    async def loaded_adapters(self) -> list[str]:
        return list(self.adapters)

    async def shutdown(self) -> None:
        self.started = False
