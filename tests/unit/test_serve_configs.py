"""Every Ray Serve config under configs/, and the one inside each KubeRay RayService, validates against
our AppConfig and every model in it has a workable placement (Ray Serve's own schema and placement
checks of the same files: tests/integration/test_ray_accepts.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.config import ConfigError, load_config
from serve_app.core.placement import load_model_shape, plan_replica_placement

REPO = Path(__file__).resolve().parents[2]
CONFIG_FILES = sorted((REPO / "configs").glob("*.yaml"))


def rayservice_configs() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted((REPO / "cluster" / "kuberay").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "RayService":
                found.append((f"{path.name}:serveConfigV2", yaml.safe_load(doc["spec"]["serveConfigV2"])))
    return found


SERVE_CONFIGS = [(p.name, yaml.safe_load(p.read_text())) for p in CONFIG_FILES] + rayservice_configs()
IDS = [name for name, _ in SERVE_CONFIGS]


def test_the_expected_configs_exist() -> None:
    names = {p.name for p in CONFIG_FILES}
    assert {
        "llama2-7b-awq-a100.yaml",
        "llama2-13b-gptq-tp4.yaml",
        "llama2-70b-awq-2x8-a100-40gb.yaml",
        "embeddings.yaml",
    } <= names
    assert len(rayservice_configs()) >= 2


@pytest.mark.parametrize(("name", "doc"), SERVE_CONFIGS, ids=IDS)
def test_args_are_a_valid_app_config_with_workable_placement(name: str, doc: dict[str, Any]) -> None:
    for app in doc["applications"]:
        assert app["import_path"] == "serve_app.app:build_app"
        config = load_config(app["args"])
        for model in config.models:
            engine, deployment = model.engine(), model.deployment()
            placement = plan_replica_placement(engine, deployment, load_model_shape(engine, deployment))
            if placement.world_size > 1:
                assert model.ray_actor_options.num_gpus == 0
            assert not placement.notes, placement.notes  # every multi-GPU config names its shape


@pytest.mark.parametrize("path", [p for p in CONFIG_FILES if p.name != "local.yaml"], ids=lambda p: p.name)
def test_config_header_states_a_memory_estimate(path: Path) -> None:
    header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    assert "Memory" in header and ("fits" in header.lower())


def test_rayservice_configs_are_copies_of_project_configs() -> None:
    project = [yaml.safe_load(p.read_text()) for p in CONFIG_FILES]
    for name, doc in rayservice_configs():
        assert doc in project, f"{name} differs from every file under configs/"


def test_a_broken_config_is_caught() -> None:
    doc = yaml.safe_load((REPO / "configs" / "llama2-70b-awq-2x8-a100-40gb.yaml").read_text())
    doc["applications"][0]["args"]["models"][0]["tensor_paralel_size"] = 8
    with pytest.raises(ConfigError, match="tensor_paralel_size: unknown key"):
        load_config(doc["applications"][0]["args"])
