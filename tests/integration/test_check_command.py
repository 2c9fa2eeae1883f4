"""``serve-app check`` against the installed vLLM: every shipped config's engine and server options
are accepted; an unknown one fails naming its key path. Starts nothing (imports vLLM)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.cli import main
from tests.unit.test_check_command import CONFIGS, _broken


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_passes_against_the_installed_vllm(path: Path) -> None:
    assert main(["check", str(path)]) == 0


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"engine_options": {"not_an_engine_arg": 1}}, "models[0].engine_options: ['not_an_engine_arg']"),
        ({"openai_server": {"options": {"no_such_flag": 1}}}, "models[0].openai_server:"),
    ],
)
def test_an_option_vllm_does_not_know_fails_with_the_key_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: dict[str, object], message: str
) -> None:
    assert main(["check", str(_broken(tmp_path, edit, "local.yaml"))]) == 1
    assert message in capsys.readouterr().err
