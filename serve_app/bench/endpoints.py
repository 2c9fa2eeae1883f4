"""One HTTP request against a chat, completions or ``/generate`` endpoint, timed into a record."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from serve_app.bench.records import (
    BAD_RESPONSE,
    CLIENT_CUT,
    CONNECTION,
    CUT_STREAM,
    NO_TOKENS,
    STREAM_ERROR,
    TIMEOUT,
    Prompt,
    RequestRecord,
    http_error_kind,
    is_openai_error,
    is_openai_error_body,
)
from serve_app.bench.settings import Target
from serve_app.bench.sse import DONE, SseParser

TokenCounter = Callable[[str], int]
Clock = Callable[[], float]


def build_payload(target: Target, prompt: Prompt) -> dict[str, Any]:
    if target.endpoint == "generate":
        return {"model": target.model, "prompt": prompt.as_text(), "max_new_tokens": prompt.max_tokens}
    payload: dict[str, Any] = {"model": target.model, "max_tokens": prompt.max_tokens, "stream": target.stream}
    if target.endpoint == "chat":
        payload["messages"] = prompt.as_messages()
    else:
        payload["prompt"] = prompt.as_text()
    if target.stream:
        # Ask for the exact token count in a final usage chunk instead of guessing from chunks.
        payload["stream_options"] = {"include_usage": True}
    if target.ignore_eos:
        payload["ignore_eos"] = True
    if target.temperature is not None:
        payload["temperature"] = target.temperature
    return payload


def _choice_text(choice: dict[str, Any]) -> str:
    if "delta" in choice:
        return str(choice["delta"].get("content") or "")
    if "message" in choice:
        return str(choice["message"].get("content") or "")
    return str(choice.get("text") or "")


class _StreamState:
    """Folds SSE payloads into timings. A chunk with ``choices`` is a token event (vLLM's rule:
    even an empty-text chunk, e.g. the role or finish chunk, advances TTFT/ITL/latency)."""

    def __init__(self, record: RequestRecord, started: float) -> None:
        self.record = record
        self.started = started
        self.last_event = started
        self.text_chunks: list[str] = []
        self.done = False
        self.usage: dict[str, Any] | None = None

    def handle(self, payload: str, now: float) -> None:
        if payload == DONE:
            self.done = True
            return
        data = json.loads(payload)
        if not isinstance(data, dict):
            raise ValueError("stream event is not a JSON object")
        if data.get("error") and not data.get("choices"):
            self.record.fail(STREAM_ERROR, json.dumps(data["error"])[:500])
            self.record.openai_error = is_openai_error(data["error"])
            return
        if choices := data.get("choices"):
            if self.record.ttft_s is None:
                self.record.ttft_s = now - self.started
            else:
                self.record.itl_s.append(now - self.last_event)
            self.last_event = now
            if piece := _choice_text(choices[0]):
                self.text_chunks.append(piece)
        if usage := data.get("usage"):
            self.usage = usage


def _set_output_tokens(
    record: RequestRecord,
    text: str,
    usage: dict[str, Any] | None,
    count_tokens: TokenCounter | None,
    chunks: int | None,
) -> None:
    """Server-reported usage first, then the tokenizer, then text chunks (streaming) or ~4
    characters a token (non-streaming)."""
    record.output_text = text
    if usage and usage.get("prompt_tokens") is not None:
        record.prompt_tokens = int(usage["prompt_tokens"])
    if usage and usage.get("completion_tokens") is not None:
        record.output_tokens, record.output_tokens_source = int(usage["completion_tokens"]), "usage"
    elif count_tokens is not None:
        record.output_tokens, record.output_tokens_source = count_tokens(text), "tokenizer"
    elif chunks is not None:
        record.output_tokens, record.output_tokens_source = chunks, "chunks"
    else:
        record.output_tokens, record.output_tokens_source = math.ceil(len(text) / 4), "estimate"


async def _read_stream(
    response: aiohttp.ClientResponse,
    record: RequestRecord,
    started: float,
    clock: Clock,
    count: TokenCounter | None,
    cut_after_chunks: int | None = None,
) -> None:
    state = _StreamState(record, started)
    parser = SseParser()
    async for raw in response.content.iter_any():
        now = clock()
        for payload in parser.feed(raw):
            # After an error event, only "[DONE]" is still of interest: it closes the stream cleanly.
            if record.error_kind is None or payload == DONE:
                state.handle(payload, now)
        if cut_after_chunks is not None and not state.done and len(state.text_chunks) >= cut_after_chunks:
            _cut_by_client(record, state, started)
            return
    for payload in parser.close():
        if record.error_kind is None or payload == DONE:
            state.handle(payload, clock())
    record.stream_done = state.done
    record.latency_s = state.last_event - started
    _set_output_tokens(record, "".join(state.text_chunks), state.usage, count, len(state.text_chunks))
    if record.error_kind is not None:
        record.latency_s = clock() - started
        return
    if not state.done:
        record.fail(CUT_STREAM, "the stream ended without [DONE]")
    elif record.ttft_s is None:
        record.fail(NO_TOKENS, "the stream carried no choices chunk")
    else:
        record.success = True


def _cut_by_client(record: RequestRecord, state: _StreamState, started: float) -> None:
    """The client leaves mid-stream (returning closes the connection): what it got is recorded."""
    record.latency_s = state.last_event - started
    _set_output_tokens(record, "".join(state.text_chunks), None, None, len(state.text_chunks))
    if record.error_kind is None:
        record.fail(CLIENT_CUT, f"closed by the client after {len(state.text_chunks)} token chunks")


async def _read_json(
    response: aiohttp.ClientResponse, record: RequestRecord, started: float, clock: Clock, count: TokenCounter | None
) -> None:
    data = await response.json(content_type=None)
    record.latency_s = clock() - started
    if not isinstance(data, dict):
        raise ValueError("response is not a JSON object")
    if "choices" in data:
        text, usage = _choice_text(data["choices"][0]), data.get("usage")
    else:  # POST /generate: {text, prompt_tokens?, completion_tokens?}
        text, usage = str(data["text"]), data if "completion_tokens" in data else None
    _set_output_tokens(record, text, usage, count, chunks=None)
    record.success = True


async def send_request(
    session: aiohttp.ClientSession,
    target: Target,
    record: RequestRecord,
    prompt: Prompt,
    count_tokens: TokenCounter | None = None,
    clock: Clock = time.perf_counter,
    cut_after_chunks: int | None = None,
) -> RequestRecord:
    """Send one request and fill ``record``; failures are recorded by kind, never raised.
    ``cut_after_chunks``: a streaming client that disconnects once it has that many token chunks."""
    payload = build_payload(target, prompt)
    headers = {"X-Request-Id": record.request_id} if record.request_id else None
    started = clock()
    responded = False
    try:
        async with session.post(target.request_url, json=payload, headers=headers) as response:
            responded = True
            record.http_status = response.status
            record.echoed_request_id = response.headers.get("X-Request-Id")
            record.retry_after = response.headers.get("Retry-After")
            if response.status != 200:
                body = await response.text()
                record.latency_s = clock() - started
                record.fail(http_error_kind(response.status), body)
                record.openai_error = is_openai_error_body(body)
                return record
            if target.stream:
                await _read_stream(response, record, started, clock, count_tokens, cut_after_chunks)
            else:
                await _read_json(response, record, started, clock, count_tokens)
    except TimeoutError:
        record.fail(TIMEOUT, f"no complete answer within {target.timeout_s} s")
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as err:
        record.fail(CUT_STREAM if responded else CONNECTION, repr(err))
    except aiohttp.ClientError as err:
        record.fail(CONNECTION, repr(err))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
        record.fail(BAD_RESPONSE, repr(err))
    if not record.success and record.latency_s == 0.0:
        record.latency_s = clock() - started
    return record
