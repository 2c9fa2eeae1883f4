"""Incremental parsing of ``text/event-stream`` bodies into ``data`` payloads (pure, no I/O)."""

from __future__ import annotations

import codecs

DONE = "[DONE]"


class SseParser:
    """Feed raw bytes as they arrive; get back the ``data`` payload of each complete event.

    Events end with a blank line; multi-line ``data:`` fields are joined with newlines; comments
    (``:``-lines, often keep-alive pings) and other fields are skipped, as the SSE spec says.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._buffer = ""

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer += self._decoder.decode(chunk).replace("\r\n", "\n").replace("\r", "\n")
        payloads: list[str] = []
        while "\n\n" in self._buffer:
            event, self._buffer = self._buffer.split("\n\n", 1)
            payload = _data_of(event)
            if payload is not None:
                payloads.append(payload)
        return payloads

    def close(self) -> list[str]:
        """The payload of a last event that lacked its closing blank line, if any."""
        tail = self._buffer + self._decoder.decode(b"", final=True)
        self._buffer = ""
        payload = _data_of(tail.strip("\n"))
        return [payload] if payload is not None else []


def _data_of(event: str) -> str | None:
    lines = [line for line in event.split("\n") if line.startswith("data:")]
    if not lines:
        return None
    return "\n".join(line[5:].removeprefix(" ") for line in lines)
