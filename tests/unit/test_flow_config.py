"""flow_control config (serve_app.config_tenants): typed, unknown keys refused with their path."""

from __future__ import annotations

import hashlib

import pytest

from serve_app.config import ConfigError, load_config

DIGEST = hashlib.sha256(b"tenant-a-key-0123456789").hexdigest()


def config(flow: dict) -> dict:
    return {"models": [{"id": "m"}], "flow_control": flow}


def test_a_tenant_config() -> None:
    tenant = {"name": "a", "api_key_sha256": [DIGEST], "tokens_per_minute": 1000, "priority": "batch"}
    flow = load_config(config({"tenants": [tenant], "minute_s": 5})).flow_control
    assert flow is not None
    assert flow.tenants[0].priority == "batch" and flow.minute_s == 5
    assert flow.default.priority == "interactive" and flow.class_queue("batch").max_wait_s == 60


def test_a_class_may_yield_to_higher_ones() -> None:
    batch = {"max_wait_s": 30, "max_in_flight": 8, "max_in_flight_when_higher_active": 0}
    flow = load_config(config({"batch": batch})).flow_control
    assert flow is not None
    assert flow.class_queue("batch").max_in_flight_when_higher_active == 0
    assert flow.class_queue("interactive").max_in_flight_when_higher_active is None


@pytest.mark.parametrize(
    ("flow", "message"),
    [
        ({"tenants": [{"name": "a", "api_key_sha256": [DIGEST], "tpm": 1}]}, "tenants[0].tpm: unknown key"),
        ({"tenants": [{"name": "a", "api_key_sha256": ["abc"]}]}, "64 lowercase hex"),
        ({"tenants": [{"name": "a", "api_key_sha256": [DIGEST], "priority": "urgent"}]}, "tenants[0].priority"),
        ({"default": {"max_concurrent": 0}}, "flow_control.default.max_concurrent"),
        ({"tenants": [{"name": "default", "api_key_sha256": [DIGEST]}]}, "reserved"),
        (
            {"tenants": [{"name": "a", "api_key_sha256": [DIGEST]}, {"name": "b", "api_key_sha256": [DIGEST]}]},
            "more than one tenant",
        ),
        ({"batch": {"max_wait": 1}}, "flow_control.batch.max_wait: unknown key"),
        ({"batch": {"max_wait_s": 1, "max_in_flight_when_higher_active": -1}}, "max_in_flight_when_higher_active"),
    ],
)
def test_bad_flow_configs_name_the_key(flow: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(config(flow))


def test_a_class_pool_names_another_model_of_the_same_task() -> None:
    models = [{"id": "m"}, {"id": "m-batch", "cpu_scheduling": "idle"}, {"id": "e", "task": "embed"}]
    loaded = load_config(
        {"models": models, "flow_control": {"batch": {"max_wait_s": 9, "model_pools": {"m": "m-batch"}}}}
    )
    assert loaded.flow_control is not None and loaded.flow_control.batch.model_pools == {"m": "m-batch"}
    for pools, message in [
        ({"m": "nope"}, "must name two models: entries by id"),
        ({"m": "m"}, "must name another model of the same task"),
        ({"m": "e"}, "must name another model of the same task"),
    ]:
        flow = {"interactive": {"max_wait_s": 5, "model_pools": pools}}
        with pytest.raises(ConfigError, match=f"flow_control.interactive.model_pools.*{message}"):
            load_config({"models": models, "flow_control": flow})
    with pytest.raises(ConfigError, match="cpu_scheduling"):
        load_config({"models": [{"id": "m", "cpu_scheduling": "realtime"}]})
