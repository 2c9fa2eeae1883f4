from __future__ import annotations

import pytest

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
