"""The shared poll loop that waits for a server under test (serve_app.bench.readiness)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from serve_app.bench.readiness import wait_until_ok


class _Flaky(BaseHTTPRequestHandler):
    calls = 0

    def do_GET(self) -> None:
        type(self).calls += 1
        self.send_response(200 if type(self).calls >= 3 else 503)
        self.end_headers()
        self.wfile.write(b"warming up")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky_url() -> Iterator[str]:
    _Flaky.calls = 0
    server = HTTPServer(("127.0.0.1", 0), _Flaky)
    # A short poll interval: shutdown() waits for serve_forever's next poll (0.5 s by default).
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/ready"
    server.shutdown()
    server.server_close()  # its listening socket (left open, it is a ResourceWarning: an error here)


class FakeClock:
    """Monotonic seconds that move only when the poll loop "sleeps"."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_polls_until_200(flaky_url: str) -> None:
    clock = FakeClock()
    assert wait_until_ok(flaky_url, 5, period_s=1.0, clock=clock, sleep=clock.sleep) == 2.0  # two polls of 503
    assert _Flaky.calls == 3


def test_times_out_naming_the_last_answer(flaky_url: str) -> None:
    clock = FakeClock()
    with pytest.raises(TimeoutError, match="503: warming up"):
        wait_until_ok(flaky_url, 1.5, period_s=1.0, clock=clock, sleep=clock.sleep)
    assert _Flaky.calls == 2 and clock.now == 2.0, "gave up once the timeout had passed on its clock"


class _ExitedProcess:
    """What wait_until_ok reads from the server's Popen: it has exited."""

    def __init__(self, returncode: int) -> None:
        self.returncode = returncode

    def poll(self) -> int:
        return self.returncode


def test_a_server_process_that_exited_fails_at_once() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RuntimeError, match="exited with 3"):
        wait_until_ok(f"http://127.0.0.1:{port}/health", 30, process=_ExitedProcess(3))  # type: ignore[arg-type]
