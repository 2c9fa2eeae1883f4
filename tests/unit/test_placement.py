from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from serve_app.config import ModelConfig
from serve_app.core.placement import PlacementError, load_model_shape, plan_replica_placement


def model(**fields: Any) -> ModelConfig:
    return ModelConfig.model_validate({"id": "m", "source": "/nonexistent/model"} | fields)


def write_config(folder: Path, **overrides: Any) -> Path:
    config = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 32000,
    } | overrides
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def plan_for(m: ModelConfig, folder: Path | None = None):  # type: ignore[no-untyped-def]
    engine, deployment = m.engine(), m.deployment()
    return plan_replica_placement(engine, deployment, load_model_shape(engine, deployment, folder))


def shape_of(m: ModelConfig, folder: Path | None = None):  # type: ignore[no-untyped-def]
    return load_model_shape(m.engine(), m.deployment(), folder)


def test_single_gpu_replica_needs_no_placement_group() -> None:
    m = model(shape_preset="llama-2-7b", ray_actor_options={"num_gpus": 1})
    placement = plan_for(m)
    assert placement.strategy is None and placement.deployment_options() == {}
    assert placement.world_size == 1


def test_tp4_on_one_node_is_strict_pack_with_actor_bundle_first() -> None:
    m = model(shape_preset="llama-2-13b", tensor_parallel_size=4, placement={"gpus_per_node": 4})
    options = plan_for(m).deployment_options()
    assert options["placement_group_strategy"] == "STRICT_PACK"
    bundles = options["placement_group_bundles"]
    assert bundles[0] == {"CPU": 1.0}  # the replica actor: CPUs only, so vLLM starts no worker there
    assert bundles[1:] == [{"GPU": 1.0, "CPU": 1.0}] * 4


def test_pipeline_across_two_nodes_is_pack() -> None:
    m = model(shape_preset="llama-2-70b", tensor_parallel_size=8, pipeline_parallel_size=2)
    placement = plan_for(m)
    assert (placement.strategy, placement.num_nodes, len(placement.bundles)) == ("PACK", 2, 17)


def test_spread_when_configured_for_a_pure_pipeline() -> None:
    m = model(
        shape_preset="llama-2-7b",
        pipeline_parallel_size=4,
        placement={"gpus_per_node": 1, "multi_node_strategy": "SPREAD", "cpus_per_worker": 4},
    )
    options = plan_for(m).deployment_options()
    assert options["placement_group_strategy"] == "SPREAD"
    assert options["placement_group_bundles"][1] == {"GPU": 1.0, "CPU": 4.0}


def test_actor_memory_and_resources_go_into_its_bundle() -> None:
    m = model(
        shape_preset="llama-2-13b",
        tensor_parallel_size=2,
        ray_actor_options={"num_cpus": 2, "memory": 4 << 30, "resources": {"a100": 0.01}},
    )
    head = plan_for(m).bundles[0]
    assert head == {"CPU": 2.0, "memory": float(4 << 30), "a100": 0.01}


def test_kv_heads_fewer_than_ranks_are_replicated_not_rejected() -> None:
    # Llama-2-70B has 8 KV heads; TP=16 replicates each on two ranks (vLLM supports it).
    m = model(shape_preset="llama-2-70b", tensor_parallel_size=16, placement={"gpus_per_node": 16})
    assert plan_for(m).world_size == 16


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"shape_preset": "llama-2-7b", "tensor_parallel_size": 3}, "does not divide the 32 attention heads"),
        ({"shape_preset": "llama-2-70b", "tensor_parallel_size": 16}, "exceeds gpus_per_node=8"),
        (
            {"shape_preset": "llama-2-70b", "tensor_parallel_size": 8, "placement": {"gpus_per_node": 4}},
            "must stay inside one node",
        ),
        (
            {"shape_preset": "smollm2-135m", "tensor_parallel_size": 3, "pipeline_parallel_size": 4},
            "would straddle two nodes",
        ),
        (
            {"shape_preset": "llama-2-13b", "tensor_parallel_size": 2, "ray_actor_options": {"num_gpus": 1}},
            "ray_actor_options.num_gpus must be 0",
        ),
        (
            {"shape_preset": "llama-2-13b", "tensor_parallel_size": 2, "ray_actor_options": {"num_cpus": 0}},
            "Ray rejects",
        ),
        ({"ray_actor_options": {"num_gpus": 9}}, "exceeds gpus_per_node"),
        (
            {
                "shape_preset": "llama-2-70b",
                "tensor_parallel_size": 8,
                "pipeline_parallel_size": 2,
                "placement": {"multi_node_strategy": "SPREAD"},
            },
            "split tensor-parallel groups",
        ),
        (
            {"shape_preset": "smollm2-135m", "pipeline_parallel_size": 32, "placement": {"gpus_per_node": 32}},
            "exceeds the 30 layers",
        ),
    ],
)
def test_rejected_layouts_name_the_reason(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(PlacementError) as err:
        plan_for(model(**fields))
    assert reason in str(err.value) and "model 'm'" in str(err.value)


def test_local_config_json_is_read_for_kv_heads(tmp_path: Path) -> None:
    folder = write_config(tmp_path / "odd", num_attention_heads=48, num_key_value_heads=6)
    with pytest.raises(PlacementError, match="does not divide the 6 KV heads"):
        plan_for(model(source=str(folder), tensor_parallel_size=4))
    folder = write_config(tmp_path / "gqa12", num_attention_heads=12, num_key_value_heads=8)
    with pytest.raises(PlacementError, match="not a multiple of the 8 KV heads"):
        plan_for(model(source=str(folder), tensor_parallel_size=12, placement={"gpus_per_node": 16}))


def test_quantization_group_must_not_split_across_ranks(tmp_path: Path) -> None:
    # Llama-2-13B as GPTQ (group 128): 13824 / 8 = 1728 is not a multiple of 128, 13824 / 4 = 3456 is.
    folder = write_config(
        tmp_path / "llama-2-13b-gptq",
        hidden_size=5120,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=40,
        intermediate_size=13824,
        quantization_config={"quant_method": "gptq", "bits": 4, "group_size": 128},
    )
    with pytest.raises(PlacementError, match="quantization group size 128"):
        plan_for(model(source=str(folder), tensor_parallel_size=8))
    assert plan_for(model(source=str(folder), tensor_parallel_size=4)).world_size == 4


def test_readable_config_json_wins_over_preset(tmp_path: Path) -> None:
    folder = write_config(tmp_path / "m", num_attention_heads=40, num_key_value_heads=40)
    info = shape_of(model(source=str(folder), shape_preset="llama-2-7b"))
    assert info is not None and info.shape.num_attention_heads == 40 and "config.json" in info.origin


def test_shape_sources_for_presets_embedded_and_unknown() -> None:
    info = shape_of(model(source="embedded:smollm2-135m-instruct"), Path("/nonexistent"))
    assert info is not None and info.shape.num_kv_heads == 3
    assert shape_of(model()) is None
    placement = plan_for(model(tensor_parallel_size=2))  # nothing to check the heads against
    assert placement.world_size == 2 and "unchecked" in placement.notes[0]
