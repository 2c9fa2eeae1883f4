"""A ``models:`` entry split by consumer (serve_app.config_model): one flat entry in the file, the
same keys and schema as before the split, and each consumer gets only its part."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from serve_app.config import AppConfig, BatchingConfig, ConfigError, ModelConfig, load_config
from serve_app.config_engine import EngineConfig
from serve_app.config_model import DeploymentConfig, HealthConfig, LimitsConfig
from serve_app.engine.vllm_engine import VllmEngine, engine_args_dict, engine_env_vars, server_argv
from serve_app.replica.engine_start import vllm_engine_factory
from serve_app.replica.parts import replica_parts
from tests.unit.test_serve_configs import IDS, SERVE_CONFIGS

PARTS = (EngineConfig, DeploymentConfig, LimitsConfig, HealthConfig)
# The file's keys for one model, as they were before the split (the schema is the user's contract).
FLAT_KEYS = {
    "id", "source", "task", "dtype", "quantization", "kv_cache_dtype", "max_model_len",
    "tensor_parallel_size", "pipeline_parallel_size", "placement", "shape_preset", "enforce_eager", "seed",
    "engine_options", "openai_server", "lora", "num_replicas", "autoscaling", "max_ongoing_requests",
    "ray_actor_options", "cpu_scheduling", "batching", "default_max_tokens", "max_tokens_limit", "max_n",
    "readiness_prompt", "readiness_expect", "readiness_timeout_s", "engine_stall_timeout_s", "health_check_period_s",
    "allow_ungated",
}  # fmt: skip
ENTRY: dict[str, Any] = {
    "id": "m",
    "source": "/nonexistent/m",
    "dtype": "bfloat16",
    "max_model_len": 1024,
    "engine_options": {"max_num_seqs": 16},
    "openai_server": {"served_model_aliases": ["m-alias"]},
    "lora": {"max_loras": 2, "adapters": [{"name": "sql", "path": "/nonexistent/sql"}]},
    "num_replicas": 3,
    "ray_actor_options": {"num_cpus": 2, "env_vars": {"A": "1"}},
    "placement": {"preflight_timeout_s": 5},
    "max_n": 2,
    "default_max_tokens": 32,
    "readiness_expect": "Paris",
    "engine_stall_timeout_s": 7,
    "batching": {"max_batch_size": 4},
}


def test_the_parts_and_batching_partition_the_entry() -> None:
    fields = [name for part in PARTS for name in part.model_fields]
    assert len(fields) == len(set(fields))
    assert [*fields, "batching"] == list(ModelConfig.model_fields)
    assert set(ModelConfig.model_fields) == FLAT_KEYS


def test_the_json_schema_of_an_entry_is_flat_with_the_same_keys() -> None:
    schema = AppConfig.model_json_schema()["$defs"]["ModelConfig"]
    assert set(schema["properties"]) == FLAT_KEYS
    assert schema["additionalProperties"] is False and schema["required"] == ["id"]
    assert "description" not in schema  # as before the split: no docstring on ModelConfig


def test_each_part_holds_its_fields_values() -> None:
    model = load_config({"models": [ENTRY]}).models[0]
    parts = (model.engine(), model.deployment(), model.limits(), model.health())
    for part, part_type in zip(parts, PARTS, strict=True):
        assert type(part) is part_type
        assert part.model_dump() == model.model_dump(include=set(part_type.model_fields))
    engine, deployment, limits, health = parts
    assert engine.served_names == ["m", "m-alias", "sql"] and engine.gpus_per_replica == 1
    assert engine.engine_options == {"max_num_seqs": 16} and engine.lora is model.lora
    assert deployment.num_replicas == 3 and deployment.placement.preflight_timeout_s == 5
    assert (limits.max_n, limits.default_max_tokens, limits.max_tokens_limit) == (2, 32, 4096)
    assert health.readiness_expect == "Paris" and health.engine_stall_timeout_s == 7
    assert model.batching == BatchingConfig(max_batch_size=4)


def test_a_part_carries_no_other_parts_keys() -> None:
    model = ModelConfig.model_validate(ENTRY)
    engine = model.engine().model_dump()
    assert set(engine) == set(EngineConfig.model_fields)
    assert not set(engine) & {"num_replicas", "ray_actor_options", "max_n", "readiness_prompt", "batching"}
    with pytest.raises(ValueError, match="num_replicas"):
        EngineConfig.model_validate(model.model_dump())  # the whole entry is not an engine config


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"engine_optons": {}}, r"models\[0\]\.engine_optons: unknown key"),
        ({"engine_options": {"dtype": "half"}}, r"models\[0\]\.engine_options: .*repeats typed field"),
        ({"shape_preset": "nope"}, r"models\[0\]\.shape_preset: .*unknown shape_preset"),
        ({"default_max_tokens": 9000}, r"models\[0\]: .*default_max_tokens exceeds max_tokens_limit"),
        ({"health_check_period_s": 0}, r"models\[0\]\.health_check_period_s: "),
        ({"batching": {"max_batch_size": 0}}, r"models\[0\]\.batching\.max_batch_size: "),
        ({"lora": {"max_loras": 1}, "task": "embed"}, r"models\[0\]: .*lora: "),
    ],
)
def test_every_parts_checks_still_run_on_the_flat_entry(fields: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError, match=path):
        load_config({"models": [{"id": "m", "source": "/nonexistent/m"} | fields]})


def test_the_check_across_parts_stays_on_the_entry() -> None:
    """Quantization is judged with the replica's GPUs (deployment) and the checkpoint (engine)."""
    with pytest.raises(ConfigError, match=r"models\[0\]: .*quantization: "):
        load_config({"models": [{"id": "m", "source": "/nonexistent/m", "quantization": "fp8"}]})
    on_gpu = {"id": "m", "source": "/nonexistent/m", "quantization": "fp8", "ray_actor_options": {"num_gpus": 1}}
    assert load_config({"models": [on_gpu]}).models[0].engine().quantization == "fp8"


@pytest.mark.parametrize(("name", "doc"), SERVE_CONFIGS, ids=IDS)
def test_every_shipped_model_is_its_parts_put_together(name: str, doc: dict[str, Any]) -> None:
    for app in doc["applications"]:
        for model in load_config(app["args"]).models:
            parts = (model.engine(), model.deployment(), model.limits(), model.health())
            entry = {k: v for part in parts for k, v in part.model_dump().items()}
            assert ModelConfig.model_validate(entry | {"batching": model.batching.model_dump()}) == model


def test_the_engine_adapter_is_built_from_the_engine_part() -> None:
    model = ModelConfig.model_validate(ENTRY | {"ray_actor_options": {"num_gpus": 0.5}})
    engine = vllm_engine_factory(replica_parts(model), Path("/models/m"))
    assert isinstance(engine, VllmEngine) and type(engine.config) is EngineConfig
    assert (engine.actor_gpus, engine.preflight_timeout_s) == (0.5, 5)
    path = Path("/models/m")
    assert engine_args_dict(engine.config, path) == engine_args_dict(model, path)
    assert server_argv(engine.config, path) == server_argv(model, path)
    assert engine_env_vars(engine.config) == engine_env_vars(model)
