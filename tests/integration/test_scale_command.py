"""``serve-app scale`` end to end against a stand-in for Ray's Serve REST client (waiting for
replicas, a refused token). In this tier because it imports Ray; the config edit itself is
unit-tested in tests/unit/test_scale.py."""

from __future__ import annotations

import pytest
from ray.dashboard.modules.serve import sdk
from ray.exceptions import AuthenticationError

from serve_app.cli import main
from serve_app.commands import scale
from tests.unit.test_scale import details, serve_details


class FakeClient:
    """The Serve REST client: the details it answers in turn (the last one repeats), the config it got."""

    def __init__(self, address: str, answers: list[dict] | None = None, error: Exception | None = None) -> None:
        self.answers = answers or [details()]
        self.error = error
        self.deployed: dict | None = None

    def get_serve_details(self) -> dict:
        if self.error:
            raise self.error
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def deploy_applications(self, config: dict) -> None:
        self.deployed = config


def run_scale(monkeypatch: pytest.MonkeyPatch, client: FakeClient, *argv: str) -> int:
    monkeypatch.setattr(sdk, "ServeSubmissionClient", lambda address: client)
    monkeypatch.setattr(scale, "POLL_S", 0)
    return main(["scale", "a", "llm-m", "2", *argv])


def test_wait_returns_once_n_replicas_run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    polls = [serve_details(["RUNNING"]), serve_details(["RUNNING", "STARTING"]), serve_details(["RUNNING"] * 2)]
    client = FakeClient("", [details(), *polls])
    assert run_scale(monkeypatch, client, "--wait", "30") == 0
    assert client.deployed is not None
    assert "2 replicas running" in capsys.readouterr().out


def test_wait_fails_when_replicas_do_not_come(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    client = FakeClient("", [details(), serve_details(["RUNNING", "PENDING_ALLOCATION"])])
    assert run_scale(monkeypatch, client, "--wait", "0.05") == 1
    assert "1 of 2 replicas running" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("mode", "hint"), [(None, "export RAY_AUTH_MODE=token"), ("token", "use the one it was started with")]
)
def test_refused_token_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, mode: str | None, hint: str
) -> None:
    if mode is None:
        monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    else:
        monkeypatch.setenv("RAY_AUTH_MODE", mode)
    client = FakeClient("", error=AuthenticationError("Authentication required: Missing authentication token"))
    assert run_scale(monkeypatch, client) == 2
    err = capsys.readouterr().err
    assert hint in err and "Missing authentication token" in err
    assert client.deployed is None
