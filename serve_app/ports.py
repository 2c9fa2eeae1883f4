"""A TCP port free on this host now: for the pre-flight check's rendezvous, the tests' servers and
the benchmarks' servers (one home, so each does not keep its own copy)."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
