"""``serve-app check`` without vLLM: every shipped config passes the schema, gate, adapter and
placement checks; a broken one fails naming the offending key path (the check against the
installed vLLM: tests/integration/test_check_command.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serve_app.cli import main

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_passes(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(path), "--no-engine-options"]) == 0
    assert "ok" in capsys.readouterr().out


def _broken(tmp_path: Path, edit: dict[str, object], name: str = "llama2-70b-awq-2x8-a100-40gb.yaml") -> Path:
    doc = yaml.safe_load((REPO / "configs" / name).read_text())
    doc["applications"][0]["args"]["models"][0].update(edit)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"tensor_paralel_size": 8}, "models[0].tensor_paralel_size: unknown key 'tensor_paralel_size'"),
        ({"placement": {"gpus_per_node": 8, "preflight_timeout_s": -1}}, "models[0].placement.preflight_timeout_s:"),
        ({"tensor_parallel_size": 3}, "models[0]: model 'llama-2-70b-chat-awq':"),
    ],
)
def test_a_broken_config_fails_with_the_key_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: dict[str, object], message: str
) -> None:
    assert main(["check", str(_broken(tmp_path, edit)), "--no-engine-options"]) == 1
    assert message in capsys.readouterr().err


def test_a_file_without_a_serve_app_application_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump({"applications": [{"name": "x", "import_path": "other:app"}]}))
    assert main(["check", str(path)]) == 1
    assert "no application with import_path serve_app.app:build_app" in capsys.readouterr().err
