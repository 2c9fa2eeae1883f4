from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from serve_app.config import ConfigError, app_args_from_serve_file, load_config

REPO = Path(__file__).resolve().parents[2]


def minimal(**model: object) -> dict:
    return {"models": [{"id": "m"} | model]}


def test_local_config_is_valid() -> None:
    config = load_config(app_args_from_serve_file(REPO / "configs" / "local.yaml"))
    model = config.models[0]
    assert model.source == "embedded:smollm2-135m-instruct"
    assert model.enforce_eager is True
    assert model.dtype in ("float32", "bfloat16")


def test_defaults() -> None:
    config = load_config(minimal())
    assert config.router.policy == "pow2"
    assert config.models[0].batching.max_batch_size == 1
    assert config.models[0].gpus_per_replica == 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"models": [{"id": "m", "dtpye": "float32"}]}, "models[0].dtpye: unknown key 'dtpye'"),
        ({"models": [{"id": "m"}], "routr": {}}, "routr: unknown key 'routr'"),
        ({"models": [{"id": "m"}], "router": {"polcy": "x"}}, "router.polcy: unknown key 'polcy'"),
        (minimal(batching={"max_batch_size": 8, "timeout": 1}), "models[0].batching.timeout: unknown key"),
        (minimal(dtype="float8"), "models[0].dtype"),
        (minimal(tensor_parallel_size=0), "models[0].tensor_parallel_size"),
        (minimal(source="embedded:gpt-5"), "unknown embedded model"),
        (minimal(engine_options={"dtype": "half"}), "engine_options repeats typed field"),
        (minimal(autoscaling={"min_replicas": 3, "max_replicas": 2}), "min_replicas (3) exceeds max_replicas (2)"),
        (minimal(batching={"length_bins": [256, 128]}), "length_bins"),
        (minimal(default_max_tokens=100, max_tokens_limit=10), "default_max_tokens exceeds"),
        ({"models": []}, "models"),
        ({"models": [{"id": "a"}, {"id": "a"}]}, "duplicate model id"),
        ({"models": [{"id": "m"}], "router": {"overflow_status": 500}}, "router.overflow_status"),
        ({}, "models: Field required"),
    ],
)
def test_bad_configs_name_key_and_path(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(data)
    assert message in str(err.value)


def test_config_is_frozen_and_model_lookup() -> None:
    config = load_config({"models": [{"id": "a"}, {"id": "b", "task": "embed"}]})
    assert config.model("b") is not None and config.model("c") is None
    with pytest.raises(ValidationError):
        config.models[0].id = "z"  # type: ignore[misc]
