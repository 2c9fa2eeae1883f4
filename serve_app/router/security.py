"""API keys, per-client rate limits and CORS for the HTTP ingress.

Keys come from the environment variable and/or file that ``ServerConfig`` names, read once when the
app is built. They are kept only as SHA-256 digests and a presented key is compared with every one
of them through ``hmac.compare_digest``: equal-length digests and no early exit, so response time
says nothing about how much of a key matched, or which key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from serve_app.config import ConfigError, ServerConfig
from serve_app.config_tenants import TenantConfig
from serve_app.core.ratelimit import KeyedRateLimiter, RateDecision
from serve_app.router.errors import OpenAIError

if TYPE_CHECKING:
    from serve_app.router.models import RoutedModel

OPEN_PATHS = frozenset({"/health", "/ready"})
MIN_KEY_CHARS = 16
# Bounds on what one request's body may claim, so absurd numbers cannot overflow the estimate.
_MAX_CHOICES = 128


def _keys_from_text(text: str, separator: str | None, source: str) -> list[str]:
    keys = [k.strip() for k in (text.split(separator) if separator else text.splitlines())]
    keys = [k for k in keys if k and not k.startswith("#")]
    for i, key in enumerate(keys):
        if len(key) < MIN_KEY_CHARS or any(c.isspace() for c in key):
            raise ConfigError(
                f"API key #{i + 1} from {source} is shorter than {MIN_KEY_CHARS} characters or has spaces"
            )
    return keys


def load_api_keys(server: ServerConfig, environ: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """The configured keys. A configured source that is missing or empty is an error: an
    operator who asked for keys must never get an open server by accident."""
    keys: list[str] = []
    if server.api_keys_env is not None:
        source = f"environment variable {server.api_keys_env}"
        found = _keys_from_text(environ.get(server.api_keys_env, ""), ",", source)
        if not found:
            raise ConfigError(f"server.api_keys_env: {source} is unset or holds no keys")
        keys += found
    if server.api_keys_file is not None:
        path = Path(server.api_keys_file)
        try:
            text = path.read_text()
        except OSError as err:
            raise ConfigError(f"server.api_keys_file: cannot read {path}: {err.strerror}") from None
        found = _keys_from_text(text, None, str(path))
        if not found:
            raise ConfigError(f"server.api_keys_file: {path} holds no keys")
        keys += found
    return tuple(dict.fromkeys(keys))


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class ApiKeys:
    def __init__(self, keys: tuple[str, ...], digests: tuple[bytes, ...] = ()) -> None:
        """``digests``: keys known only by their SHA-256 (flow_control tenants' api_key_sha256)."""
        self._digests = tuple(dict.fromkeys((*(_digest(k) for k in keys), *digests)))

    def __len__(self) -> int:
        return len(self._digests)

    def identify(self, presented: str) -> str | None:
        """A stable id of the matching key (its digest's prefix, safe to log), or None."""
        digest = _digest(presented)
        matched: bytes | None = None
        for known in self._digests:
            if hmac.compare_digest(digest, known):  # no break: every key is compared
                matched = known
        return None if matched is None else "key-" + matched.hex()[:12]


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def estimate_tokens(body: bytes, completion_budget: Callable[[str | None, Any], int]) -> int:
    """About 4 bytes a token for what is sent, plus the completion budget for every choice (the
    router's admission estimates the same way). Unparsable bodies count their bytes only."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return len(body) // 4
    if not isinstance(doc, dict):
        return len(body) // 4
    requested = next((doc[k] for k in ("max_completion_tokens", "max_tokens", "max_new_tokens") if k in doc), None)
    n = doc.get("n", 1)
    choices = min(n, _MAX_CHOICES) if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
    model = doc.get("model")
    return len(body) // 4 + choices * completion_budget(model if isinstance(model, str) else None, requested)


def model_completion_budget(models: Sequence[RoutedModel]) -> Callable[[str | None, Any], int]:
    """Tokens a request may generate: what it asks for, capped by the model's limit; embeddings none.
    ``model_name`` is looked up by id (None: the first model)."""
    by_id = {m.id: m for m in models}

    def budget(model_name: str | None, requested: Any) -> int:
        model = by_id.get(model_name) if model_name else models[0]
        if model is None or not model.generates:
            return 0
        if isinstance(requested, int) and not isinstance(requested, bool) and requested > 0:
            return min(requested, model.limits.max_tokens_limit)
        return model.limits.default_max_tokens

    return budget


async def _read_body(receive: Any) -> tuple[bytes, Any]:
    """The whole body, and a ``receive`` that hands it to the app again (the outer BodySizeLimit
    has already capped its size)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), receive
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    replayed = False

    async def replay() -> dict[str, Any]:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        message: dict[str, Any] = await receive()
        return message

    return body, replay


def _rate_limited(decision: RateDecision) -> OpenAIError:
    if decision.retry_after_s is None:
        return OpenAIError(
            429,
            "this request's estimated tokens exceed your per-minute token limit; send a shorter request",
            code="request_too_large_for_rate_limit",
        )
    return OpenAIError(
        429,
        f"rate limit on {decision.reason} per minute reached; retry after {decision.retry_after_s} s",
        code="rate_limit_exceeded",
        headers={"Retry-After": str(decision.retry_after_s)},
    )


class SecurityGuard:
    """ASGI middleware: API key check (401) and per-client rate limits (429) on every route but
    the open probes. Sits inside BodySizeLimit, so the body it may read is already capped."""

    def __init__(
        self,
        app: Any,
        keys: ApiKeys | None,
        limiter: KeyedRateLimiter | None,
        completion_budget: Callable[[str | None, Any], int],
        on_reject: Callable[[str], None] = lambda _reason: None,
    ) -> None:
        self.app = app
        self.keys = keys
        self.limiter = limiter
        self.completion_budget = completion_budget
        self.on_reject = on_reject

    def _client(self, scope: dict[str, Any]) -> str | OpenAIError:
        """Who is asking: the key's id, or the client address when no keys are configured."""
        if self.keys is None:
            client = scope.get("client")
            return f"addr-{client[0] if client else 'unknown'}"
        token = bearer_token(list(scope.get("headers") or []))
        identity = self.keys.identify(token) if token is not None else None
        if identity is not None:
            return identity
        if token is None:
            message, challenge = "missing API key: send 'Authorization: Bearer <key>'", "Bearer"
        else:
            message, challenge = "incorrect API key provided", 'Bearer error="invalid_token"'
        code = "missing_api_key" if token is None else "invalid_api_key"
        return OpenAIError(401, message, code=code, headers={"WWW-Authenticate": challenge})

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if scope["type"] != "http" or (path[len(root) :] if root and path.startswith(root) else path) in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        client = self._client(scope)
        if isinstance(client, OpenAIError):
            self.on_reject("unauthorized")
            await client.response()(scope, receive, send)
            return
        scope.setdefault("state", {})["client"] = client  # who is asking, for flow control
        if self.limiter is not None:
            tokens = 0
            if self.limiter.limits_tokens and scope.get("method") == "POST":
                body, receive = await _read_body(receive)
                tokens = estimate_tokens(body, self.completion_budget)
            decision = self.limiter.check(client, tokens)
            if not decision.allowed:
                self.on_reject(f"rate_limited_{decision.reason}")
                await _rate_limited(decision).response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def install_security(
    app: FastAPI,
    server: ServerConfig,
    tenants: Sequence[TenantConfig],
    models: Sequence[RoutedModel],
    on_reject: Callable[[str], None],
) -> None:
    """Reads the API keys (once, now) and adds the guard; call it before adding BodySizeLimit so
    that the size cap runs first. Adds nothing when neither keys nor limits are configured."""
    keys = load_api_keys(server)
    digests = tuple(bytes.fromhex(d) for t in tenants for d in t.api_key_sha256)
    limits = (server.rate_limit_requests_per_minute, server.rate_limit_tokens_per_minute)
    limiter = KeyedRateLimiter(*limits) if any(v is not None for v in limits) else None
    if keys or digests or limiter is not None:
        app.add_middleware(
            SecurityGuard,
            keys=ApiKeys(keys, digests) if keys or digests else None,
            limiter=limiter,
            completion_budget=model_completion_budget(models),
            on_reject=on_reject,
        )


def install_cors(app: FastAPI, origins: list[str]) -> None:
    """Outermost, so that preflights are answered without a key and refusals carry CORS headers."""
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-Id", "X-Priority"],
            expose_headers=["X-Request-Id", "Retry-After"],
        )
