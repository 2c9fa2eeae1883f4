"""The router's side of a ``models:`` entry, split by consumer (serve_app.router.models): the router's
objects hold only the parts they read, never a whole ModelConfig (or the AppConfig around it).

Every part is a base class of ModelConfig, so a type checker accepts the whole entry where a part is
asked for: these tests check the exact types the consumers end up holding."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest

from serve_app import validate
from serve_app.config import AppConfig, ModelConfig, RouterConfig
from serve_app.config_engine import EngineConfig
from serve_app.config_model import DeploymentConfig, HealthConfig, LimitsConfig
from serve_app.router.client import LocalReplicaClient
from serve_app.router.models import ModelDirectory, RoutedModel, adapter_directory, build_readiness, routed_models
from tests.unit.conftest import build_app

ROUTER = Path(validate.__file__).parent / "router"
MODELS = [
    ModelConfig(
        id="a",
        source="/nonexistent/a",
        max_n=2,
        default_max_tokens=16,
        max_tokens_limit=64,
        openai_server={"served_model_aliases": ["a2"]},
        engine_options={"scheduling_policy": "priority"},
        readiness_expect="Paris",
    ),
    ModelConfig(id="b", source="/nonexistent/b", task="embed", autoscaling={"min_replicas": 0, "max_replicas": 2}),
]
CONFIG = AppConfig(models=MODELS)


def test_only_the_splitting_module_reads_a_model_config() -> None:
    readers = sorted(p.name for p in ROUTER.glob("*.py") if "ModelConfig" in p.read_text())
    assert readers == ["models.py"]


def test_the_ingress_gets_the_limits_part_and_facts_derived_from_the_rest() -> None:
    a, b = routed_models(MODELS)
    assert type(a.limits) is LimitsConfig and type(b.limits) is LimitsConfig
    assert a.limits == MODELS[0].limits()
    assert (a.names, a.generates, a.priority_scheduling, a.lora, a.scales_to_zero) == (
        ("a", "a2"),
        True,
        True,
        False,
        False,
    )
    assert (b.names, b.generates, b.priority_scheduling, b.scales_to_zero) == (("b",), False, False, True)


def test_readiness_gets_each_models_health_part() -> None:
    readiness = build_readiness(CONFIG, _client())
    assert [t.model_id for t in readiness.targets] == ["a", "b"]
    assert all(type(t.health) is HealthConfig for t in readiness.targets)
    assert readiness.targets[0].health.readiness_expect == "Paris"
    assert [t.scales_to_zero for t in readiness.targets] == [False, True]


def test_the_adapter_directory_gets_the_engine_parts() -> None:
    directory = adapter_directory(MODELS)
    held = list(directory._models.values())
    assert [type(m) for m in held] == [EngineConfig, EngineConfig]


def test_placement_gets_the_engine_and_deployment_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[type, type]] = []
    plan = validate.plan_replica_placement

    def spy(engine: EngineConfig, deployment: DeploymentConfig, shape: Any = None) -> Any:
        seen.append((type(engine), type(deployment)))
        return plan(engine, deployment, shape)

    monkeypatch.setattr(validate, "plan_replica_placement", spy)
    validate.check_placements(CONFIG)
    assert seen == [(EngineConfig, DeploymentConfig)] * 2


def test_the_http_app_holds_no_whole_config() -> None:
    """What the routes and middleware of the router's app hold (closures, and the serve_app objects
    they reach): routed models and parts, no ModelConfig, AppConfig or RouterConfig."""
    app = build_app(CONFIG, _client())
    found = _reachable([route.endpoint for route in app.routes] + [m.kwargs for m in app.user_middleware])
    assert not [o for o in found if isinstance(o, ModelConfig | AppConfig | RouterConfig)]
    directories = [o for o in found if isinstance(o, ModelDirectory)]
    assert directories and all(type(m) is RoutedModel for d in directories for m in d.all)


def _client() -> LocalReplicaClient:
    return LocalReplicaClient({})  # never called: the consumers are only built


def _reachable(roots: list[Any], depth: int = 6) -> list[Any]:
    """Objects reachable from ``roots`` through closures, containers and the attributes of the
    router's own objects; a replica client is not followed (its replicas hold their own config)."""
    seen: dict[int, Any] = {}
    frontier = list(roots)
    for _ in range(depth):
        following: list[Any] = []
        for obj in frontier:
            if id(obj) in seen or isinstance(obj, LocalReplicaClient):
                continue
            seen[id(obj)] = obj
            following += _children(obj)
        frontier = following
    return list(seen.values())


def _children(obj: Any) -> list[Any]:
    if inspect.isfunction(obj):
        return [cell.cell_contents for cell in obj.__closure__ or ()]
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, list | tuple | set | frozenset):
        return list(obj)
    if type(obj).__module__.startswith("serve_app.router") and hasattr(obj, "__dict__"):
        return list(vars(obj).values())
    return []
