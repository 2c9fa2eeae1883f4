"""The engine part of a model's config: what its replica's vLLM engine and vLLM's OpenAI server
over it are built from (``serve_app.engine.vllm_engine``).

A few fields are typed (the checkpoint, its dtype and quantization, the context length, the
parallel layout, LoRA); anything else vLLM takes goes through by name, explicitly, in
``engine_options`` (``AsyncEngineArgs``) and ``openai_server.options`` (``vllm serve``'s frontend
flags), both checked against the installed vLLM by ``serve-app check``. Pure: no Ray, no vLLM.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serve_app.config_lora import LoraConfig, lora_problem
from serve_app.models.embedded import EMBEDDED_MODELS, EMBEDDED_PREFIX, SMOLLM2_SOURCE

# Options our typed fields own; passing them again through engine_options would be ambiguous.
_TYPED_ENGINE_FIELDS = frozenset(
    {
        "model",
        "served_model_name",
        "dtype",
        "quantization",
        "kv_cache_dtype",
        "max_model_len",
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "enforce_eager",
        "seed",
        # models[].lora owns these
        "enable_lora",
        "max_loras",
        "max_lora_rank",
        "max_cpu_loras",
    }
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpenAIServerConfig(_Strict):
    """vLLM's OpenAI server over this model's engine: ``vllm serve``'s frontend flags, typed where
    they are common, any other one by name in ``options`` (checked by vLLM's parser at start)."""

    # More names clients may send as "model" (``--served-model-name`` after the model's id).
    served_model_aliases: list[str] = Field(default_factory=list)
    chat_template: str | None = None
    tool_call_parser: str | None = None
    enable_auto_tool_choice: bool = False
    reasoning_parser: str | None = None
    # e.g. {"max_log_len": 100, "enable_prompt_tokens_details": true}
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _auto_tools_need_parser(self) -> OpenAIServerConfig:
        if self.enable_auto_tool_choice and not self.tool_call_parser:
            raise ValueError("enable_auto_tool_choice needs tool_call_parser")
        return self

    @field_validator("options")
    @classmethod
    def _no_typed_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        owned = {"model", "served_model_name", "host", "port", "api_key", "lora_modules"} | set(cls.model_fields)
        repeated = sorted(owned & {k.replace("-", "_") for k in options})
        if repeated:
            raise ValueError(f"options repeats {repeated}: set them as typed fields (or not at all)")
        return options


class EngineConfig(_Strict):
    """The checkpoint and how vLLM runs it and answers for it (the name it serves is the id)."""

    id: str = Field(..., min_length=1, max_length=256, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    source: str = SMOLLM2_SOURCE
    task: Literal["generate", "embed"] = "generate"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    quantization: str | None = None
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = "auto"
    max_model_len: int | None = Field(2048, ge=16)
    tensor_parallel_size: int = Field(1, ge=1, le=64)
    pipeline_parallel_size: int = Field(1, ge=1, le=64)
    enforce_eager: bool = False
    seed: int = 0
    engine_options: dict[str, Any] = Field(default_factory=dict)
    openai_server: OpenAIServerConfig = Field(default_factory=OpenAIServerConfig)
    # LoRA adapters served on this base (serve_app.config_lora); None: no LoRA support in the engine.
    lora: LoraConfig | None = None
    # Serve a quantized checkpoint even without a passing evaluation report (see serve_app.quantize.gate).
    allow_ungated: bool = False

    @field_validator("source")
    @classmethod
    def _known_embedded(cls, source: str) -> str:
        if source.startswith(EMBEDDED_PREFIX) and source[len(EMBEDDED_PREFIX) :] not in EMBEDDED_MODELS:
            raise ValueError(f"unknown embedded model {source!r}; known: {', '.join(EMBEDDED_MODELS)}")
        return source

    @field_validator("engine_options")
    @classmethod
    def _no_shadowed_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        shadowed = sorted(_TYPED_ENGINE_FIELDS & options.keys())
        if shadowed:
            raise ValueError(f"engine_options repeats typed field(s) {shadowed}; set them on the model instead")
        return options

    @model_validator(mode="after")
    def _lora_combination(self) -> EngineConfig:
        if self.lora is not None:
            names = [self.id, *self.openai_server.served_model_aliases]
            problem = lora_problem(self.lora, self.id, names, self.task, self.source)
            if problem:
                raise ValueError(f"lora: {problem}")
        return self

    @property
    def served_names(self) -> list[str]:
        """Every name clients may send as ``model`` for this model: its id, aliases, static adapters."""
        adapters = [a.name for a in self.lora.adapters] if self.lora else []
        return [self.id, *self.openai_server.served_model_aliases, *adapters]

    @property
    def gpus_per_replica(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size
