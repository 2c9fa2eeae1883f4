"""The ``router:`` section split by consumer (serve_app.config_router): one flat section in the
file, and each consumer gets only its part; the request router's kwargs are the replica-choice part."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve_app.config import ConfigError, load_config
from serve_app.config_router import AdmissionConfig, ReplicaChoiceConfig, RouterConfig, RouterDeploymentConfig
from serve_app.core.policies import PrefixAffinityPolicy
from serve_app.core.replica_choice import RoutingCore

PARTS = (ReplicaChoiceConfig, AdmissionConfig, RouterDeploymentConfig)
SECTION = {
    "policy": "prefix",
    "prefix_chars": 64,
    "adapter_affinity": False,
    "max_queued_requests": 8,
    "request_timeout_s": 30,
    "num_replicas": 2,
    "resources": {"router_node": 0.01},
}


def test_the_parts_partition_the_section() -> None:
    fields = [name for part in PARTS for name in part.model_fields]
    assert len(fields) == len(set(fields))
    assert fields == list(RouterConfig.model_fields)  # the file's keys and their order are unchanged


def test_each_part_holds_its_fields_values() -> None:
    router = load_config({"models": [{"id": "m"}], "router": SECTION}).router
    parts = (router.replica_choice(), router.admission(), router.deployment())
    for part, model in zip(parts, PARTS, strict=True):
        assert type(part) is model
        assert part.model_dump() == {name: getattr(router, name) for name in model.model_fields}
    assert parts[0].policy == "prefix" and parts[1].max_queued_requests == 8 and parts[2].num_replicas == 2


def test_a_part_runs_its_own_checks_on_the_sections_values() -> None:
    router = RouterConfig.model_validate(SECTION)
    assert router.deployment().resources == {"router_node": 0.01}
    unchecked = router.model_copy(update={"num_replicas": 0})  # model_copy validates nothing
    with pytest.raises(ValidationError, match="num_replicas"):
        unchecked.deployment()


def test_request_router_kwargs_are_the_replica_choice_fields_only() -> None:
    router = RouterConfig.model_validate(SECTION)
    kwargs = router.replica_choice().model_dump(mode="json")
    assert set(kwargs) == set(ReplicaChoiceConfig.model_fields)
    assert not set(kwargs) & (set(AdmissionConfig.model_fields) | set(RouterDeploymentConfig.model_fields))
    core = RoutingCore.from_kwargs(kwargs)
    assert isinstance(core.policy, PrefixAffinityPolicy) and core.policy.prefix_chars == 64
    assert core.affinity is None


def test_request_router_rejects_the_whole_router_section() -> None:
    """Sent all of ``router:``, the request router fails by the first key that is not its own."""
    with pytest.raises(ValidationError, match="max_queued_requests"):
        RoutingCore.from_kwargs(RouterConfig.model_validate(SECTION).model_dump(mode="json"))


def test_unknown_router_key_is_rejected_with_its_path() -> None:
    with pytest.raises(ConfigError, match=r"router\.polcy"):
        load_config({"models": [{"id": "m"}], "router": {"polcy": "prefix"}})
