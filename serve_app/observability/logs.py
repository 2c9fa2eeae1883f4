"""Structured logs: one JSON object a line, each carrying the id of the request it is about.

Pure (neither Ray nor vLLM). The router writes one line per HTTP request when its answer is sent
(:class:`RequestLog`); each replica writes one per request it answers, keyed by the same ``request_id``
(the ``X-Request-Id`` the client sent or Ray Serve's proxy made up), so the two join.

Why not Ray Serve's ``LoggingConfig(encoding="JSON")``: it formats only the ``ray.serve`` logger
(into per-replica files), its filters overwrite ``request_id``, ``route`` and ``replica`` with the
Serve request context (wrong for a router batch, where one handle call carries several client
requests, and ``replica`` would name the router rather than the LLM replica), and it serialises
every attribute of a record, so nothing but discipline would keep request text out. Here the
``serve_app`` logger gets its own handler on stderr (Ray keeps each worker's stderr in its logs
folder) with a fixed allow-list of fields; Ray's own access lines carry the same request id.

Prompts and completions are recorded only when ``ServerConfig.log_prompts`` is set.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from serve_app.core.request_id import current_request_id

LOGGER_NAME = "serve_app"
REQUEST_LOGGER_NAME = "serve_app.requests"
# Every field a line may carry besides timestamp, level, logger and message, in output order.
# An allow-list: anything else a caller (or a library) puts on a record never reaches the log.
REQUEST_FIELDS = (
    "request_id", "method", "route", "model", "status", "latency_ms", "prompt_tokens", "completion_tokens",
    "finish_reason", "replica", "error", "prompt", "completion",
)  # fmt: skip
# Opt-in request text is cut to this many characters per string: a 2 MB body is not a log line.
TEXT_LIMIT = 16_384


class RequestIdFilter(logging.Filter):
    """Stamps a record with the request id of the context it was logged in
    (:func:`serve_app.core.request_id.request_context`); an explicit
    ``extra={"request_id": ...}`` wins."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            request_id = current_request_id()
            if request_id is not None:
                record.request_id = request_id
        return True


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in REQUEST_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # ASCII escapes: a client's lone surrogate or control character cannot break the line.
        return json.dumps(entry, default=str, separators=(",", ":"))


class JsonLineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`install_json_logging` attaches (a type of its own, so it can be replaced)."""


def install_json_logging(stream: TextIO | None = None, level: int = logging.INFO) -> JsonLineHandler:
    """Send the ``serve_app`` loggers' records, as JSON lines, to ``stream`` (stderr) only.

    Called by each Ray Serve deployment's constructor, never at import; calling it again replaces
    the previous handler."""
    logger = logging.getLogger(LOGGER_NAME)
    for old in [h for h in logger.handlers if isinstance(h, JsonLineHandler)]:
        logger.removeHandler(old)
    # The process's own stderr, not ``sys.stderr``: Ray Serve replaces the latter in replicas
    # (RAY_SERVE_LOG_TO_STDERR=0, set by its throughput-optimized mode) with a writer into its
    # own formatted log, which would wrap every JSON line in Serve's text format.
    handler = JsonLineHandler(stream or sys.__stderr__ or sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    handler.addFilter(RequestIdFilter())  # on the handler: logger filters skip records of child loggers
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return handler


def clip_text(value: Any, limit: int = TEXT_LIMIT) -> Any:
    """``value`` with every string in it (nested in lists and dicts too) cut to ``limit`` characters."""
    if isinstance(value, str):
        return value if len(value) <= limit else f"{value[:limit]}...[{len(value) - limit} more characters]"
    if isinstance(value, Mapping):
        return {k: clip_text(v, limit) for k, v in value.items()}
    if isinstance(value, Sequence):
        return [clip_text(v, limit) for v in value]
    return value


@dataclass
class RequestLog:
    """What the router learns about one HTTP request, written as one line when its answer is sent."""

    request_id: str
    method: str
    include_text: bool = False  # ServerConfig.log_prompts
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None  # set when a stream fails after its first token (the status is already 200)
    prompt: Any = None
    completion: Any = None

    def note_prompt(self, prompt: str | Sequence[Any] | None) -> None:
        if self.include_text and prompt is not None:
            self.prompt = clip_text(prompt)

    def note_choices(
        self,
        prompt_tokens: int,
        completion_tokens: Sequence[int],
        finish_reasons: Sequence[str | None],
        texts: Sequence[str],
    ) -> None:
        """The answer's choices; several finish reasons are joined with commas (``stop,length``)."""
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = sum(completion_tokens)
        reasons = [r or "none" for r in finish_reasons]
        self.finish_reason = ",".join(reasons) if reasons else None
        if self.include_text:
            self.completion = clip_text(texts[0] if len(texts) == 1 else list(texts))

    def fields(self, route: str, status: int, latency_s: float) -> dict[str, Any]:
        """The ``extra`` of the request's line. Text fields are present only if ``include_text``."""
        fields: dict[str, Any] = {
            "request_id": self.request_id,
            "method": self.method,
            "route": route,
            "model": self.model,
            "status": status,
            "latency_ms": round(latency_s * 1000, 1),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "finish_reason": self.finish_reason,
            "error": self.error,
        }
        if self.include_text:
            fields |= {"prompt": self.prompt, "completion": self.completion}
        return fields

    def write(self, logger: logging.Logger, route: str, status: int, latency_s: float, quiet: bool = False) -> None:
        """``quiet`` (health and readiness probes): at DEBUG unless the answer is a server error."""
        level = logging.DEBUG if quiet else logging.INFO
        if status >= 500 or self.error:
            level = logging.WARNING
        logger.log(level, "%s %s %d", self.method, route, status, extra=self.fields(route, status, latency_s))


@dataclass
class ReplicaRequestLog:
    """One request answered on a replica, written as one line when it ends. Never carries request
    text: the replica has no business logging it."""

    request_id: str
    route: str
    model: str
    replica: str
    started: float  # monotonic seconds
    status: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None

    def fields(self, now: float) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "route": self.route,
            "model": self.model,
            "replica": self.replica,
            "latency_ms": round((now - self.started) * 1000, 1),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "finish_reason": self.finish_reason,
            "status": self.status,
            "error": self.error,
        }

    def write(self, logger: logging.Logger, now: float) -> None:
        left = self.status == 499  # the client went away: not the server's failure
        level = logging.WARNING if (self.error and not left) or (self.status or 0) >= 500 else logging.INFO
        outcome = "cancelled" if left else "failed" if self.error else "answered"
        logger.log(level, "request %s", outcome, extra=self.fields(now))
