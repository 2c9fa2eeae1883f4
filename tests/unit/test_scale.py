from __future__ import annotations

import pytest
from ray.dashboard.modules.serve import sdk
from ray.exceptions import AuthenticationError

from serve_app.cli import main
from serve_app.commands import scale
from serve_app.commands.scale import ScaleError, replica_counts, scaled_config


def details(autoscaling: bool = False) -> dict:
    deployment = {"name": "llm-m", "autoscaling_config": {"min_replicas": 1}} if autoscaling else None
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": 8000},
        "controller_info": {"node_id": "x"},
        "applications": {
            "a": {
                "deployed_app_config": {"name": "a", "import_path": "serve_app.app:build_app", "args": {}}
                | ({"deployments": [deployment]} if deployment else {}),
                "deployments": {"router": {}, "llm-m": {}},
            },
            "b": {"deployed_app_config": {"name": "b", "import_path": "x:y"}, "deployments": {}},
        },
    }


def test_sets_replicas_and_keeps_other_apps() -> None:
    config = scaled_config(details(), "a", "llm-m", 3)
    assert [c["name"] for c in config["applications"]] == ["a", "b"]
    assert config["applications"][0]["deployments"] == [{"name": "llm-m", "num_replicas": 3}]
    assert config["http_options"]["port"] == 8000
    assert "controller_info" not in config


def test_replaces_autoscaling_with_fixed_count() -> None:
    (entry,) = scaled_config(details(autoscaling=True), "a", "llm-m", 2)["applications"][0]["deployments"]
    assert entry == {"name": "llm-m", "num_replicas": 2}


@pytest.mark.parametrize(
    ("app", "deployment", "n", "message"),
    [("zz", "llm-m", 1, "no application 'zz'"), ("a", "nope", 1, "no deployment 'nope'"), ("a", "llm-m", -1, ">= 0")],
)
def test_errors(app: str, deployment: str, n: int, message: str) -> None:
    with pytest.raises(ScaleError, match=message):
        scaled_config(details(), app, deployment, n)


def test_app_not_from_config_is_refused() -> None:
    d = details()
    d["applications"]["b"]["deployed_app_config"] = None
    with pytest.raises(ScaleError, match="not deployed from a config"):
        scaled_config(d, "a", "llm-m", 1)


def serve_details(states: list[str]) -> dict:
    replicas = [{"replica_id": str(i), "state": s} for i, s in enumerate(states)]
    return {"applications": {"a": {"deployments": {"llm-m": {"replicas": replicas}}}}}


def test_replica_counts() -> None:
    assert replica_counts(serve_details(["RUNNING", "STARTING"]), "a", "llm-m") == (1, 2)
    assert replica_counts(serve_details([]), "zz", "llm-m") == (0, 0)


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
