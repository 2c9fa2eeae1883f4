"""RequestIdentity: request ids, and one metrics call + log line at the last byte of each answer."""

from __future__ import annotations

from typing import Any

import pytest

from serve_app.router.request_identity import RequestIdentity
from tests.unit.virtual_time import advance, loop_clock


class StreamingApp:
    """Sends ``parts`` body chunks ``delay_s`` apart; raises instead when ``fail`` is set."""

    def __init__(self, parts: int = 3, delay_s: float = 0.02, fail: bool = False) -> None:
        self.parts, self.delay_s, self.fail = parts, delay_s, fail
        self.seen_state: dict[str, Any] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.seen_state = dict(scope["state"])
        scope["state"]["model"] = "m"
        if self.fail:
            raise RuntimeError("boom")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for i in range(self.parts):
            await advance(self.delay_s)  # the loop's clock moves on; no real wait
            await send({"type": "http.response.body", "body": b"x", "more_body": i < self.parts - 1})


def _scope(headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/v1/completions", "headers": headers or []}


async def _run(app: StreamingApp, scope: dict[str, Any]) -> tuple[list, list]:
    finished: list[tuple] = []
    sent: list[dict] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    clock = loop_clock()
    middleware = RequestIdentity(app, lambda *a: finished.append((*a, clock())), log_prompts=False, clock=clock)
    started = clock()
    try:
        await middleware(scope, None, send)
    finally:
        finished[:] = [(*f[:-1], f[-1] - started) for f in finished]
    return finished, sent


async def test_a_stream_is_counted_once_at_its_last_byte_and_gets_an_id() -> None:
    app = StreamingApp(parts=3, delay_s=0.02)
    finished, sent = await _run(app, _scope())
    assert len(finished) == 1
    route, model, status, latency_s, at = finished[0]
    assert (route, model, status) == ("unmatched", "m", 200)
    assert latency_s == pytest.approx(0.06) and at == pytest.approx(0.06), "timed to the stream's end, not its headers"
    rid = app.seen_state["request_id"]
    assert len(rid) == 32 and app.seen_state["log"].request_id == rid
    assert (b"x-request-id", rid.encode()) in sent[0]["headers"]


async def test_a_clients_request_id_is_used_and_not_echoed_twice() -> None:
    app = StreamingApp(parts=1, delay_s=0)
    _, sent = await _run(app, _scope([(b"X-Request-Id", b"abc-123")]))
    assert app.seen_state["request_id"] == "abc-123"
    assert not any(k == b"x-request-id" for k, _ in sent[0]["headers"]), "Ray Serve's proxy echoes it"


async def test_an_app_error_is_counted_once_as_500() -> None:
    finished: list[tuple] = []
    middleware = RequestIdentity(StreamingApp(fail=True), on_finished=lambda *a: finished.append(a), log_prompts=False)
    with pytest.raises(RuntimeError):
        await middleware(_scope(), None, _noop_send)
    assert [(f[0], f[2]) for f in finished] == [("unmatched", 500)]


async def test_a_client_leaving_mid_stream_is_counted_once_with_the_status_sent() -> None:
    finished: list[tuple] = []
    middleware = RequestIdentity(StreamingApp(parts=5), on_finished=lambda *a: finished.append(a), log_prompts=False)
    sent: list[dict] = []

    async def send(message: dict[str, Any]) -> None:
        if len(sent) == 2:
            raise OSError("client went away")
        sent.append(message)

    with pytest.raises(OSError):
        await middleware(_scope(), None, send)
    assert [f[2] for f in finished] == [200]


async def _noop_send(message: dict[str, Any]) -> None:
    return None
