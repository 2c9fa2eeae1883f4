"""LoRA configuration: validation, what reaches vLLM's engine and server, and the adapter folder checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serve_app.config import ConfigError, load_config
from serve_app.engine.vllm_engine import engine_args_dict, engine_env_vars, server_argv
from serve_app.models.lora_adapters import adapter_problem
from serve_app.quantize.lora_support import checkpoint_schemes, lora_quantization_problem
from serve_app.validate import check_adapters
from tests.unit.lora_files import write_adapter, write_base


def with_lora(lora: dict, **model: object) -> dict:
    return {"models": [{"id": "m", "source": "/models/base", "lora": lora} | model]}


ADAPTERS = [{"name": "a", "path": "/adapters/a"}, {"name": "b", "path": "/adapters/b"}]


def test_a_lora_config_reaches_the_engine_and_the_server() -> None:
    lora = {"adapters": ADAPTERS, "max_loras": 2, "max_lora_rank": 8, "max_cpu_loras": 4}
    model = load_config(with_lora(lora)).models[0]
    args = engine_args_dict(model, Path("/models/base"))
    assert {k: args[k] for k in ("enable_lora", "max_loras", "max_lora_rank", "max_cpu_loras")} == {
        "enable_lora": True,
        "max_loras": 2,
        "max_lora_rank": 8,
        "max_cpu_loras": 4,
    }
    argv = server_argv(model, Path("/models/base"))
    assert argv[argv.index("--lora-modules") :][:3] == ["--lora-modules", "a=/adapters/a", "b=/adapters/b"]
    assert model.served_names == ["m", "a", "b"]
    assert engine_env_vars(model) == {}


def test_without_lora_the_engine_gets_no_lora_arguments() -> None:
    model = load_config({"models": [{"id": "m"}]}).models[0]
    assert "enable_lora" not in engine_args_dict(model, Path("/m"))
    assert "--lora-modules" not in server_argv(model, Path("/m"))


def test_dynamic_adapters_turn_on_vllms_runtime_loading_route() -> None:
    model = load_config(with_lora({"dynamic": True})).models[0]
    assert engine_env_vars(model) == {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}
    assert model.lora is not None and model.lora.cached_adapters == 1  # vLLM's default: max_loras


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (with_lora({"adapters": ADAPTERS, "max_lora_rank": 12}), "models[0].lora.max_lora_rank"),
        (with_lora({"adapters": [*ADAPTERS, ADAPTERS[0]]}), "duplicate adapter name(s): ['a']"),
        (with_lora({"max_loras": 4, "max_cpu_loras": 2}), "max_cpu_loras (2) must be >= max_loras (4)"),
        (with_lora({"adapters": [{"name": "m", "path": "/a"}]}), "adapter name(s) ['m'] are already names"),
        (with_lora({"adapters": [{"name": "a", "path": "/a", "rank": 8}]}), "adapters[0].rank: unknown key"),
        (with_lora({"adapters": [{"name": "a b", "path": "/a"}]}), "models[0].lora.adapters[0].name"),
        (with_lora({"adapters": [{"name": "a", "path": "embedded:elvish"}]}), "unknown embedded adapter"),
        (with_lora({"maxloras": 2}), "models[0].lora.maxloras: unknown key"),
        (with_lora({}, task="embed"), "LoRA adapters need a generate model"),
        (with_lora({}, engine_options={"enable_lora": True}), "engine_options repeats typed field"),
        (with_lora({}, openai_server={"options": {"lora_modules": ["x=/y"]}}), "options repeats ['lora_modules']"),
        (
            with_lora({"adapters": [{"name": "p", "path": "embedded:pirate"}]}, source="embedded:all-minilm-l6-v2"),
            "are made for embedded:smollm2-135m-instruct",
        ),
    ],
)
def test_bad_lora_configs_are_refused_naming_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(data)
    assert message in str(err.value)


def test_dynamic_adapters_take_several_router_replicas() -> None:
    # They share the app's adapter catalog (tests/unit/test_adapter_catalog.py).
    config = load_config(with_lora({"dynamic": True}) | {"router": {"num_replicas": 2}})
    assert config.router.num_replicas == 2 and config.models[0].lora is not None and config.models[0].lora.dynamic


def test_an_adapter_name_may_not_name_another_model() -> None:
    data = {"models": [{"id": "m", "lora": {"adapters": [{"name": "other", "path": "/a"}]}}, {"id": "other"}]}
    with pytest.raises(ConfigError, match=r"name\(s\) \['other'\] name more than one model or adapter"):
        load_config(data)


def test_an_adapter_that_fits_passes(tmp_path: Path) -> None:
    base = write_base(tmp_path / "base")
    assert adapter_problem(write_adapter(tmp_path / "ok"), 8, base) is None
    assert adapter_problem(write_adapter(tmp_path / "ok16", rank=16), 16, None) is None


def test_adapter_problems_are_named(tmp_path: Path) -> None:
    base = write_base(tmp_path / "base")
    assert "is not a folder" in str(adapter_problem(tmp_path / "missing", 8, base))
    (tmp_path / "empty").mkdir()
    assert "holds no adapter_config.json" in str(adapter_problem(tmp_path / "empty", 8, base))
    no_weights = write_adapter(tmp_path / "no-weights")
    (no_weights / "adapter_model.safetensors").unlink()
    assert "holds no adapter_model.safetensors" in str(adapter_problem(no_weights, 8, base))
    assert "has rank 16, above max_lora_rank 8" in str(adapter_problem(write_adapter(tmp_path / "r16", 16), 8, base))
    deep = write_adapter(tmp_path / "deep", layers=3)
    assert "layer 2, but the base has 2 layers" in str(adapter_problem(deep, 8, base))
    wide = write_adapter(tmp_path / "wide", shapes={"q_proj": (96, 96)})
    assert "does not fit the base's q_proj (64 -> 64)" in str(adapter_problem(wide, 8, base))
    broken = write_adapter(tmp_path / "broken")
    (broken / "adapter_config.json").write_text("{")
    assert "is not valid JSON" in str(adapter_problem(broken, 8, base))


def test_a_missing_static_adapter_is_a_config_error_when_the_app_is_built(tmp_path: Path) -> None:
    base = write_base(tmp_path / "base")
    ok = {"name": "ok", "path": str(write_adapter(tmp_path / "ok"))}
    check_adapters(load_config(with_lora({"adapters": [ok], "max_lora_rank": 8}, source=str(base))))
    missing = {"name": "gone", "path": str(tmp_path / "gone")}
    config = load_config(with_lora({"adapters": [ok, missing], "max_lora_rank": 8}, source=str(base)))
    with pytest.raises(ConfigError, match=r"models\[0\].lora.adapters\[1\]: adapter path .*gone' is not a folder"):
        check_adapters(config)
    big = {"name": "big", "path": str(write_adapter(tmp_path / "big", rank=32))}
    config = load_config(with_lora({"adapters": [big], "max_lora_rank": 16}, source=str(base)))
    with pytest.raises(ConfigError, match="has rank 32, above max_lora_rank 16"):
        check_adapters(config)


def test_a_replica_resolves_and_checks_its_static_adapters(tmp_path: Path) -> None:
    from serve_app.replica.adapters import AdapterError, with_local_adapters

    base = write_base(tmp_path / "base")
    ok = {"name": "ok", "path": str(write_adapter(tmp_path / "ok"))}
    model = load_config(with_lora({"adapters": [ok], "max_lora_rank": 8})).models[0]
    assert with_local_adapters(model, base, None).lora == model.lora  # local folders stay as they are
    bad = [
        ok,
        {"name": "gone", "path": str(tmp_path / "gone")},
        {"name": "big", "path": str(write_adapter(tmp_path / "big", 16))},
    ]
    model = load_config(with_lora({"adapters": bad, "max_lora_rank": 8})).models[0]
    with pytest.raises(AdapterError) as err:
        with_local_adapters(model, base, None)
    assert "adapters[gone]: adapter path" in str(err.value) and "adapters[big]: adapter 'big' has rank 16" in str(
        err.value
    )


def test_an_embedded_adapter_is_cached_by_a_fingerprint_of_its_data_and_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from serve_app.models import embedded_adapters as ea

    cache = tmp_path / "models"
    target = write_adapter(ea.adapter_dir("pirate", cache))
    files = {p.name: p.stat().st_size for p in target.iterdir()}
    marker = {"format_version": 1, "fingerprint": ea._fingerprint("pirate"), "files": files}
    (target / "serve_app_adapter.json").write_text(json.dumps(marker))
    assert ea.is_prepared("pirate", cache) and ea.prepare_adapter("pirate", cache) == target  # no training
    assert not ea.is_prepared("robot", cache)
    monkeypatch.setattr(ea, "SETTINGS", ea.TrainSettings(steps=99))
    assert not ea.is_prepared("pirate", cache)  # changed settings train again


W8A8_GROUP = {
    "weights": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel"},
    "input_activations": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token", "dynamic": True},
}
W4A16_GROUP = {"weights": {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 64}}


def lora_checkpoint_problem(quantization_config: dict, on_gpu: bool) -> str | None:
    return lora_quantization_problem(checkpoint_schemes(quantization_config), "gpu" if on_gpu else "cpu")


def quantized_base(folder: Path, group: dict) -> Path:
    base = write_base(folder)
    hf = json.loads((base / "config.json").read_text())
    hf["quantization_config"] = {"quant_method": "compressed-tensors", "config_groups": {"group_0": group}}
    (base / "config.json").write_text(json.dumps(hf))
    return base


def test_lora_on_an_int8_w8a8_checkpoint_on_cpu_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    base = quantized_base(tmp_path / "w8a8", W8A8_GROUP)
    config = load_config(with_lora({"max_lora_rank": 8}, source=str(base), quantization="compressed-tensors"))
    with pytest.raises(ConfigError, match=r"models\[0\].lora: LoRA cannot run on an int8 W8A8 checkpoint on CPU"):
        check_adapters(config)
    on_gpu = with_lora({"max_lora_rank": 8}, source=str(base), ray_actor_options={"num_gpus": 1})
    check_adapters(load_config(on_gpu))  # no GPU failure measured (serve_app.quantize.lora_support)


def test_lora_on_other_checkpoints_passes(tmp_path: Path) -> None:
    for base in (quantized_base(tmp_path / "w4a16", W4A16_GROUP), write_base(tmp_path / "plain")):
        check_adapters(load_config(with_lora({"max_lora_rank": 8}, source=str(base))))
    check_adapters(load_config(with_lora({"max_lora_rank": 8}, source=str(tmp_path / "unreadable"))))
    assert lora_checkpoint_problem({"config_groups": {"g": W4A16_GROUP}}, on_gpu=False) is None
    assert lora_checkpoint_problem({"config_groups": {"g": W8A8_GROUP}}, on_gpu=True) is None  # not measured
    assert lora_checkpoint_problem({"config_groups": {"g": W8A8_GROUP}}, on_gpu=False) is not None


# The weights group llm-compressor's GPTQ W4A16 scheme writes (pack-quantized, activations left at 16 bits).
W4A16_PACKED_GROUP = {
    "targets": ["Linear"],
    "weights": {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 64},
    "input_activations": None,
    "output_activations": None,
    "format": "pack-quantized",
}


def test_lora_on_a_w4a16_checkpoint_on_cpu_is_accepted(tmp_path: Path) -> None:
    # Measured: vLLM 0.32's CPU int4 kernel keeps weight_packed and serves adapters on it
    # (benchmarks/lora_quantized_base.py, benchmarks/results/lora/README.md).
    base = quantized_base(tmp_path / "w4a16", W4A16_PACKED_GROUP)
    lora = {"max_lora_rank": 8}
    check_adapters(load_config(with_lora(lora, source=str(base), quantization="compressed-tensors", dtype="bfloat16")))
    assert lora_checkpoint_problem({"config_groups": {"group_0": W4A16_PACKED_GROUP}}, on_gpu=False) is None
