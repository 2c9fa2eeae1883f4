"""The plain-torch LoRA trainer on a tiny Llama: peft's layout, a fresh adapter is the base, training
moves it, and what it writes passes the adapter checks against that base. The real adapters (on
SmolLM2, served by vLLM) are tested in tests/integration/test_lora.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serve_app.models.embedded_adapters import MARKERS, training_examples
from serve_app.models.lora_adapters import adapter_problem
from serve_app.models.lora_train import TARGET_MODULES, TrainSettings, attach_lora, lora_state_dict, peft_adapter_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def tiny_llama(folder: Path) -> object:
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    folder.mkdir()
    (folder / "config.json").write_text(config.to_json_string())
    return model


def test_the_adapter_is_written_in_peft_layout_and_fits_its_base(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = tiny_llama(tmp_path / "base")
    ids = torch.tensor([[1, 2, 3, 4]])
    before = model(input_ids=ids).logits
    settings = TrainSettings(rank=8, alpha=16)
    wrapped = attach_lora(model, settings)
    assert len(wrapped) == 2 * len(TARGET_MODULES)
    assert torch.equal(model(input_ids=ids).logits, before)  # B starts at zero: the base model
    params = [p for layer in wrapped.values() for p in (layer.lora_A, layer.lora_B)]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(3):
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not torch.allclose(model(input_ids=ids).logits, before)
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)

    state = lora_state_dict(wrapped)
    key = "base_model.model.model.layers.1.self_attn.k_proj"
    assert state[f"{key}.lora_A.weight"].shape == (8, 32)  # rank x in
    assert state[f"{key}.lora_B.weight"].shape == (16, 8)  # out (2 kv heads x 8) x rank
    out = tmp_path / "adapter"
    out.mkdir()
    save_file(state, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps(peft_adapter_config(settings, "tiny")))
    assert adapter_problem(out, 8, tmp_path / "base") is None
    assert "above max_lora_rank 1" in str(adapter_problem(out, 1, tmp_path / "base"))


def test_each_shipped_adapter_has_a_visible_style() -> None:
    for name, marker in MARKERS.items():
        examples = training_examples(name)
        assert len(examples) >= 40 and all(e["answer"].startswith(marker) for e in examples)
    assert training_examples("robot")[0]["answer"].isupper()
