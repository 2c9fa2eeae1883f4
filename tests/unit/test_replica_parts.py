"""The replica's side of a ``models:`` entry (serve_app.replica.parts): an LLM replica holds the engine
part, the health part and two facts of the deployment part, never a whole ModelConfig.

Every part is a base class of ModelConfig, so a type checker accepts the whole entry where a part is
asked for: these tests check the exact types the replica ends up holding."""

from __future__ import annotations

from pathlib import Path

from serve_app import validate
from serve_app.config import ModelConfig
from serve_app.config_engine import EngineConfig
from serve_app.config_model import HealthConfig
from serve_app.engine.fake import FakeEngine
from serve_app.replica.parts import replica_parts
from tests.unit.conftest import make_replica_async

REPLICA = Path(validate.__file__).parent / "replica"
MODEL = ModelConfig(
    id="fake",
    source="/nonexistent/fake",
    readiness_timeout_s=7,
    engine_stall_timeout_s=11,
    ray_actor_options={"num_gpus": 0.5},
    placement={"preflight_timeout_s": 5},
)


def test_only_the_splitting_module_reads_a_model_config() -> None:
    readers = sorted(p.name for p in REPLICA.glob("*.py") if "ModelConfig" in p.read_text())
    assert readers == ["parts.py"]


def test_the_parts_are_the_entrys_values() -> None:
    parts = replica_parts(MODEL)
    assert (type(parts.engine), type(parts.health)) == (EngineConfig, HealthConfig)
    assert parts.engine == MODEL.engine() and parts.health == MODEL.health()
    assert (parts.actor_gpus, parts.preflight_timeout_s) == (0.5, 5)


async def test_the_replica_holds_only_its_parts(stop_replicas: None) -> None:
    replica = await make_replica_async(MODEL, FakeEngine(model_id="fake"))
    assert type(replica.engine_config) is EngineConfig and type(replica.health) is HealthConfig
    assert (replica.engine_config.id, replica.health.engine_stall_timeout_s) == ("fake", 11)
    assert not any(isinstance(value, ModelConfig) for value in vars(replica).values())
