"""Model shapes, a fact about a model used by placement and the planners: named presets and
parsing of a Hugging Face config.json.

Pure (stdlib only). The presets are the published shapes of each model's config.json, so that
``serve-app plan --model llama-2-7b`` needs no files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from serve_app.errors import ServeAppError


class UnknownModelError(ServeAppError, ValueError):
    pass


@dataclass(frozen=True)
class ModelShape:
    name: str
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int
    num_experts: int = 0  # 0 = dense MLP

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    @property
    def linear_params_per_layer(self) -> int:
        """q, k, v, o projections plus the gated MLP (gate, up, down): the weights quantization shrinks."""
        q_width = self.num_attention_heads * self.head_dim
        kv_width = self.num_kv_heads * self.head_dim
        attention = self.hidden_size * (q_width + 2 * kv_width) + q_width * self.hidden_size
        mlp = 3 * self.hidden_size * self.intermediate_size * max(1, self.num_experts)
        return attention + mlp

    @property
    def norm_params(self) -> int:
        return (2 * self.num_layers + 1) * self.hidden_size

    @property
    def linear_params(self) -> int:
        return self.num_layers * self.linear_params_per_layer

    @property
    def total_params(self) -> int:
        return self.embedding_params + self.lm_head_params + self.linear_params + self.norm_params


def _shape(name: str, **kw: Any) -> ModelShape:
    return ModelShape(name=name, **kw)


PRESETS: dict[str, ModelShape] = {
    s.name: s
    for s in (
        _shape("llama-2-7b", hidden_size=4096, num_layers=32, num_attention_heads=32, num_kv_heads=32, head_dim=128,
               intermediate_size=11008, vocab_size=32000, tie_word_embeddings=False, max_position_embeddings=4096),
        _shape("llama-2-13b", hidden_size=5120, num_layers=40, num_attention_heads=40, num_kv_heads=40, head_dim=128,
               intermediate_size=13824, vocab_size=32000, tie_word_embeddings=False, max_position_embeddings=4096),
        _shape("llama-2-70b", hidden_size=8192, num_layers=80, num_attention_heads=64, num_kv_heads=8, head_dim=128,
               intermediate_size=28672, vocab_size=32000, tie_word_embeddings=False, max_position_embeddings=4096),
        _shape("llama-3-8b", hidden_size=4096, num_layers=32, num_attention_heads=32, num_kv_heads=8, head_dim=128,
               intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False, max_position_embeddings=8192),
        _shape("llama-3-70b", hidden_size=8192, num_layers=80, num_attention_heads=64, num_kv_heads=8, head_dim=128,
               intermediate_size=28672, vocab_size=128256, tie_word_embeddings=False, max_position_embeddings=8192),
        _shape("mistral-7b", hidden_size=4096, num_layers=32, num_attention_heads=32, num_kv_heads=8, head_dim=128,
               intermediate_size=14336, vocab_size=32000, tie_word_embeddings=False, max_position_embeddings=32768),
        _shape("smollm2-135m", hidden_size=576, num_layers=30, num_attention_heads=9, num_kv_heads=3, head_dim=64,
               intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192),
    )
}  # fmt: skip


def preset(name: str) -> ModelShape:
    key = name.lower()
    if key not in PRESETS:
        raise UnknownModelError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[key]


def shape_from_hf_config(name: str, config: Mapping[str, Any]) -> ModelShape:
    """A :class:`ModelShape` from a decoder's config.json (Llama, Mistral, Qwen2 and similar)."""
    text = config.get("text_config")
    if isinstance(text, Mapping):  # multimodal wrappers keep the decoder's shape here
        config = text
    try:
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        shape = ModelShape(
            name=name,
            hidden_size=hidden,
            num_layers=int(config["num_hidden_layers"]),
            num_attention_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            intermediate_size=int(config["intermediate_size"]),
            vocab_size=int(config["vocab_size"]),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            max_position_embeddings=int(config.get("max_position_embeddings") or 0),
            num_experts=int(config.get("num_local_experts") or config.get("num_experts") or 0),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise UnknownModelError(
            f"{name}: config.json is not a decoder config this planner understands ({err})"
        ) from None
    return shape
