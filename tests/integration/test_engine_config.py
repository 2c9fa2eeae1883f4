"""The engine adapter's VllmConfig: built with the real vLLM on the embedded model (no Ray)."""

from __future__ import annotations

from typing import Any

import pytest

from serve_app.models.embedded import resolve_source

from .conftest import local_config

# What vLLM's get_batch_defaults answers on an H100/H200 (vllm/engine/arg_utils.py): the CPU
# machine running the tests gets 2048/128 in every context, so the GPU's answer is stood in.
H200_BATCHED_TOKENS = {"LLM_CLASS": 16384, "OPENAI_API_SERVER": 8192}
H200_MAX_SEQS = {"LLM_CLASS": 1024, "OPENAI_API_SERVER": 1024}


@pytest.fixture
def h200_batch_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm.engine.arg_utils import EngineArgs
    from vllm.usage.usage_lib import UsageContext

    def defaults(cls: Any, world_size: int) -> tuple[dict[Any, int], dict[Any, int]]:
        return (
            {UsageContext[k]: v for k, v in H200_BATCHED_TOKENS.items()},
            {UsageContext[k]: v for k, v in H200_MAX_SEQS.items()},
        )

    monkeypatch.setattr(EngineArgs, "get_batch_defaults", classmethod(defaults))


def _config(**model_overrides: Any) -> Any:
    from serve_app.engine.vllm_engine import build_vllm_config

    model = local_config(**model_overrides).models[0]
    return build_vllm_config(model, resolve_source(model.source, None))


@pytest.mark.usefixtures("h200_batch_defaults")
def test_engine_gets_the_batch_defaults_vllm_serve_would_pick() -> None:
    # Without the OpenAI-server usage context vLLM falls back to 2048 tokens / 128 sequences,
    # which on a GPU also caps CUDA-graph capture at 256 tokens (GPU run 5 in benchmarks/results).
    scheduler = _config().scheduler_config
    assert scheduler.max_num_batched_tokens == H200_BATCHED_TOKENS["OPENAI_API_SERVER"]
    assert scheduler.max_num_seqs == H200_MAX_SEQS["OPENAI_API_SERVER"]


@pytest.mark.usefixtures("h200_batch_defaults")
def test_explicit_engine_options_override_the_defaults() -> None:
    scheduler = _config(engine_options={"max_num_batched_tokens": 1024, "max_num_seqs": 64}).scheduler_config
    assert (scheduler.max_num_batched_tokens, scheduler.max_num_seqs) == (1024, 64)


def test_unknown_engine_option_is_refused_before_the_engine_starts() -> None:
    with pytest.raises(ValueError, match="not_an_engine_arg"):
        _config(engine_options={"not_an_engine_arg": 1})
