"""One request through a server app in-process (serve_app.replica.asgi_call): events, and the
token counts read where vLLM records them, without touching what the client asked."""

from __future__ import annotations

import asyncio
import json

import pytest

from serve_app.engine.fake import FakeEngine
from serve_app.replica.asgi_call import AsgiCall, ResponseSink
from serve_app.replica.contract import Event, RelayRequest, ResponseBody, ResponseEnd, ResponseStart


def run(payload: dict, path: str = "/v1/completions") -> list[Event]:
    events: list[Event] = []
    request = RelayRequest("r1", path, json.dumps(payload).encode())
    asyncio.run(AsgiCall(FakeEngine().app, request, ResponseSink(0, request, events.append)).run())
    return events


@pytest.mark.parametrize("stream", [False, True])
def test_usage_comes_from_the_servers_record_not_from_the_clients_options(stream: bool) -> None:
    events = run({"prompt": "one two three", "max_tokens": 5, "stream": stream})
    assert isinstance(events[0], ResponseStart) and isinstance(events[1], ResponseBody)
    end = events[-1]
    assert isinstance(end, ResponseEnd) and end.error is None
    assert (end.usage.prompt_tokens, end.usage.completion_tokens, end.usage.finish_reason) == (3, 5, "length")
    body = b"".join(e.data for e in events if isinstance(e, ResponseBody))
    assert b'"usage"' not in body or not stream  # the stream carries no usage event nobody asked for


def test_the_start_travels_with_the_first_bytes() -> None:
    events = run({"prompt": "x", "max_tokens": 2, "stream": True})
    assert [type(e) for e in events[:2]] == [ResponseStart, ResponseBody]
    assert events[0].status == 200 and (b"content-type", b"text/event-stream; charset=utf-8") in events[0].headers
