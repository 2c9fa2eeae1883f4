"""API keys, per-key rate limits and CORS on the in-process app (router + replica code + FakeEngine)."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from serve_app.config import AppConfig, ConfigError, ModelConfig, ServerConfig
from serve_app.engine.fake import FakeEngine
from serve_app.observability import InMemoryMetricsBackend, ServeAppMetrics
from serve_app.router import security
from serve_app.router.client import LocalReplicaClient
from serve_app.router.models import routed_models
from tests.unit.conftest import app_client as served_app
from tests.unit.conftest import build_app, make_replica

KEY_A = "sk-test-aaaaaaaaaaaaaaaaaaaa"
KEY_B = "sk-test-bbbbbbbbbbbbbbbbbbbb"
KEYS_ENV = "SERVE_APP_TEST_API_KEYS"
CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextmanager
def app_client(metrics: ServeAppMetrics | None = None, **server: Any) -> Iterator[TestClient]:
    config = AppConfig(
        models=[ModelConfig(id="fake", source="/nonexistent/fake", max_tokens_limit=32, default_max_tokens=8)],
        server=ServerConfig(**server),
    )
    with served_app(config, FakeEngine(max_model_len=64), metrics) as client:
        yield client


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv(KEYS_ENV, f"{KEY_A}, {KEY_B}")
    with app_client(api_keys_env=KEYS_ENV) as client:
        yield client


def assert_error(resp: Any, status: int, type_: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == type_
    return err


def test_missing_key_is_401_with_bearer_challenge(keyed: TestClient) -> None:
    resp = keyed.post("/v1/chat/completions", json=CHAT)
    assert assert_error(resp, 401, "authentication_error")["code"] == "missing_api_key"
    assert resp.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("auth", [f"Bearer {KEY_A}x", f"Bearer {KEY_A[:-1]}", f"Basic {KEY_A}", KEY_A, "Bearer "])
def test_wrong_key_is_401(keyed: TestClient, auth: str) -> None:
    resp = keyed.post("/v1/chat/completions", json=CHAT, headers={"Authorization": auth})
    assert_error(resp, 401, "authentication_error")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


def test_right_keys_pass(keyed: TestClient) -> None:
    for key in (KEY_A, KEY_B):
        assert keyed.post("/v1/chat/completions", json=CHAT, headers=bearer(key)).status_code == 200
    assert keyed.get("/v1/models", headers={"authorization": f"bearer {KEY_B}"}).status_code == 200


class RecordingClient(LocalReplicaClient):
    def __init__(self, replicas: dict[str, Any]) -> None:
        super().__init__(replicas)
        self.sent: list[Any] = []

    def stream(self, model: str, requests: list[Any]) -> Any:
        self.sent += requests
        return super().stream(model, requests)


def test_the_api_key_and_client_headers_do_not_reach_the_model_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEYS_ENV, KEY_A)
    config = AppConfig(models=[ModelConfig(id="fake", source="/x")], server=ServerConfig(api_keys_env=KEYS_ENV))
    replica = make_replica(config.models[0], FakeEngine())
    client = RecordingClient({"fake": replica})
    with TestClient(build_app(config, client)) as http:
        headers = bearer(KEY_A) | {"Cookie": "session=1", "X-Forwarded-For": "10.0.0.1"}
        assert http.post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 200
    asyncio.run(replica.__del__())
    (sent,) = client.sent
    assert sent.headers == ((b"content-type", b"application/json"),)
    assert KEY_A.encode() not in sent.body


def test_only_health_and_ready_are_open(keyed: TestClient) -> None:
    assert keyed.get("/health").status_code == 200
    assert keyed.get("/ready").status_code == 200
    for method, path in [("GET", "/v1/models"), ("POST", "/generate"), ("GET", "/openapi.json"), ("GET", "/nope")]:
        assert_error(keyed.request(method, path), 401, "authentication_error")


def test_every_key_is_compared_in_constant_time(keyed: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real_compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", spy)
    assert keyed.get("/v1/models", headers=bearer(KEY_A)).status_code == 200
    assert len(compared) == 2  # no early exit on the first (matching) key
    assert all(len(a) == len(b) == 32 for a, b in compared)  # digests: the key's length does not leak


def test_keys_are_read_once_when_the_app_is_built(keyed: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEYS_ENV, "sk-test-cccccccccccccccccccc")
    assert keyed.get("/v1/models", headers=bearer(KEY_A)).status_code == 200
    assert keyed.get("/v1/models", headers=bearer("sk-test-cccccccccccccccccccc")).status_code == 401


def test_keys_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# team a\n{KEY_A}\n\n{KEY_B}\n")
    with app_client(api_keys_file=str(path)) as client:
        assert client.get("/v1/models", headers=bearer(KEY_B)).status_code == 200
        assert client.get("/v1/models", headers=bearer("# team a")).status_code == 401


def test_configured_but_absent_keys_fail_the_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(KEYS_ENV, raising=False)
    server = ServerConfig(api_keys_env=KEYS_ENV, api_keys_file=str(tmp_path / "absent"))  # validation reads nothing
    with pytest.raises(ConfigError, match=KEYS_ENV):
        security.load_api_keys(server)
    with pytest.raises(ConfigError, match="cannot read"):
        security.load_api_keys(ServerConfig(api_keys_file=str(tmp_path / "absent")))
    monkeypatch.setenv(KEYS_ENV, "short")
    with pytest.raises(ConfigError, match="shorter than"):
        security.load_api_keys(ServerConfig(api_keys_env=KEYS_ENV))


def test_request_rate_limit_is_429_with_retry_after_per_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEYS_ENV, f"{KEY_A},{KEY_B}")
    with app_client(api_keys_env=KEYS_ENV, rate_limit_requests_per_minute=2) as client:
        assert [client.get("/v1/models", headers=bearer(KEY_A)).status_code for _ in range(2)] == [200, 200]
        resp = client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY_A))
        assert assert_error(resp, 429, "rate_limit_error")["code"] == "rate_limit_exceeded"
        assert 1 <= int(resp.headers["Retry-After"]) <= 30
        assert client.get("/v1/models", headers=bearer(KEY_B)).status_code == 200  # key B has its own budget
        assert client.get("/health").status_code == 200  # probes are never limited
        assert client.get("/v1/models").status_code == 401  # no key: refused before the limiter


def test_token_rate_limit_counts_estimated_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEYS_ENV, KEY_A)
    with app_client(api_keys_env=KEYS_ENV, rate_limit_tokens_per_minute=100) as client:
        # ~30 tokens of body plus the 30 it may generate: the second does not fit in 100
        big = CHAT | {"max_tokens": 30}
        assert client.post("/v1/chat/completions", json=big, headers=bearer(KEY_A)).status_code == 200
        resp = client.post("/v1/chat/completions", json=big, headers=bearer(KEY_A))
        assert_error(resp, 429, "rate_limit_error")
        assert int(resp.headers["Retry-After"]) >= 1
        huge = CHAT | {"messages": [{"role": "user", "content": "x" * 1000}]}
        resp = client.post("/v1/chat/completions", json=huge, headers=bearer(KEY_A))
        assert assert_error(resp, 429, "rate_limit_error")["code"] == "request_too_large_for_rate_limit"
        assert "Retry-After" not in resp.headers


def test_refusals_are_counted_by_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEYS_ENV, KEY_A)
    store = InMemoryMetricsBackend()
    with app_client(ServeAppMetrics(store), api_keys_env=KEYS_ENV, rate_limit_requests_per_minute=1) as client:
        assert client.get("/v1/models").status_code == 401
        assert [client.get("/v1/models", headers=bearer(KEY_A)).status_code for _ in range(3)] == [200, 429, 429]
    assert store.counter("serve_app_router_rejections", reason="unauthorized") == 1
    assert store.counter("serve_app_router_rejections", reason="rate_limited_requests") == 2
    # refused before routing, they are still answered requests
    assert store.counter("serve_app_requests", route="unmatched", model="none", status="429") == 2


def test_without_keys_limits_apply_per_client_address() -> None:
    with app_client(rate_limit_requests_per_minute=1) as client:
        assert client.get("/v1/models").status_code == 200
        assert client.get("/v1/models").status_code == 429


def test_estimate_counts_body_and_completion_budget() -> None:
    budget = security.model_completion_budget(
        routed_models([ModelConfig(id="m", max_tokens_limit=50, default_max_tokens=10)])
    )
    body = b'{"model": "m", "max_tokens": 40, "n": 2}'
    assert security.estimate_tokens(body, budget) == len(body) // 4 + 80
    capped = b'{"model": "m", "max_tokens": 999999}'
    assert security.estimate_tokens(capped, budget) == len(capped) // 4 + 50
    assert security.estimate_tokens(b'{"model": "m"}', budget) == 3 + 10  # the model's default budget
    assert security.estimate_tokens(b"[not json", budget) == 2


def test_cors_is_off_by_default(keyed: TestClient) -> None:
    resp = keyed.get("/health", headers={"Origin": "https://app.example.com"})
    assert "access-control-allow-origin" not in resp.headers
    preflight = keyed.options("/v1/chat/completions", headers=_preflight("https://app.example.com"))
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEYS_ENV, KEY_A)
    with app_client(api_keys_env=KEYS_ENV, cors_allow_origins=["https://app.example.com"]) as client:
        preflight = client.options("/v1/chat/completions", headers=_preflight("https://app.example.com"))
        assert preflight.status_code == 200  # answered without a key
        assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        refused = client.get("/v1/models", headers={"Origin": "https://app.example.com"})
        assert refused.status_code == 401  # and the browser may read why
        assert refused.headers["access-control-allow-origin"] == "https://app.example.com"
        other = client.get("/health", headers={"Origin": "https://evil.example.net"})
        assert "access-control-allow-origin" not in other.headers


def test_cors_origins_are_validated() -> None:
    with pytest.raises(ValueError, match="CORS origin"):
        ServerConfig(cors_allow_origins=["https://app.example.com/path"])
    with pytest.raises(ValueError):
        ServerConfig(api_keys_env="not a name")


def _preflight(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
