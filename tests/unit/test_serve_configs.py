"""Every Ray Serve config under configs/, and the one inside each KubeRay RayService, validates against
our AppConfig and every model in it has a workable placement (Ray Serve's own schema and placement
checks of the same files: tests/integration/test_ray_accepts.py)."""

from __future__ import annotations

import sys
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


def make_serve_env() -> dict[str, str]:
    """The variables `make serve` sets on the `serve run configs/local.yaml` line (Ray reads them)."""
    recipe = (REPO / "Makefile").read_text().split("\nserve:", 1)[1]
    line = next(x for x in recipe.splitlines() if "serve run configs/local.yaml" in x)
    return dict(w.split("=", 1) for w in line.split() if "=" in w and not w.startswith("$"))


def test_make_serve_runs_ray_workers_at_the_engines_niceness() -> None:
    # Ray's default (15) puts the replicas' vLLM engine below every other process on the host.
    assert make_serve_env() == {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_worker_niceness": "0"}


def test_cpu_compare_measures_the_door_as_make_serve_starts_it() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import cpu_compare
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    assert make_serve_env().items() <= cpu_compare.DOOR_ENV.items()
