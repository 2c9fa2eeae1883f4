"""LoRA adapter configuration of a model (``models[].lora``): typed, validated, pure.

The engine settings (``max_loras``, ``max_lora_rank``, ``max_cpu_loras``) go to vLLM as its own
engine arguments; static adapters are vLLM's ``--lora-modules``. What needs the adapter files
(the path exists, its rank fits ``max_lora_rank``) is checked where they are readable:
``serve_app.models.lora_adapters.adapter_problem``, when the app is built and on each replica.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve_app.models.embedded import SMOLLM2_SOURCE

EMBEDDED_ADAPTER_PREFIX = "embedded:"
# Made by ``serve-app make-adapters`` for the embedded SmolLM2 (serve_app.models.embedded_adapters).
EMBEDDED_ADAPTERS = ("pirate", "robot")
EMBEDDED_ADAPTER_BASE = SMOLLM2_SOURCE
ADAPTER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
# The ranks vLLM's LoRAConfig accepts for max_lora_rank.
LoraRank = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraAdapter(_Strict):
    # The name clients send as "model".
    name: str = Field(..., pattern=ADAPTER_NAME_PATTERN)
    # A folder in peft's layout (adapter_config.json + adapter_model.safetensors) readable on every
    # replica's node, or ``embedded:<name>`` for an adapter of the embedded SmolLM2.
    path: str = Field(..., min_length=1)

    @model_validator(mode="after")
    def _known_embedded(self) -> LoraAdapter:
        if self.path.startswith(EMBEDDED_ADAPTER_PREFIX) and self.embedded_name not in EMBEDDED_ADAPTERS:
            raise ValueError(f"unknown embedded adapter {self.path!r}; known: {', '.join(EMBEDDED_ADAPTERS)}")
        return self

    @property
    def embedded_name(self) -> str | None:
        if not self.path.startswith(EMBEDDED_ADAPTER_PREFIX):
            return None
        return self.path[len(EMBEDDED_ADAPTER_PREFIX) :]


class LoraConfig(_Strict):
    # Loaded on every replica at start (vLLM's --lora-modules), listed in /v1/models with the
    # model's id as their parent.
    adapters: list[LoraAdapter] = Field(default_factory=list)
    # Adapters in one engine batch (vLLM's max_loras: LoRA slots on the accelerator).
    max_loras: int = Field(1, ge=1, le=256)
    # The largest adapter rank accepted (vLLM's max_lora_rank; it sizes the LoRA buffers).
    max_lora_rank: LoraRank = 16
    # Adapters one replica keeps loaded (vLLM's max_cpu_loras, an LRU cache; default max_loras).
    # The bound on adapters per replica: past it the least recently used one is evicted and
    # reloaded from its path when asked for again.
    max_cpu_loras: int | None = Field(None, ge=1, le=4096)
    # Adapters may be added and removed on the running app: POST /v1/load_lora_adapter
    # {"lora_name", "lora_path"} and /v1/unload_lora_adapter {"lora_name"} (behind the API keys).
    dynamic: bool = False
    # At most this many adapters added at run time per model (bounds memory and metric labels).
    max_dynamic_adapters: int = Field(32, ge=1, le=1024)

    @model_validator(mode="after")
    def _consistent(self) -> LoraConfig:
        names = [a.name for a in self.adapters]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate adapter name(s): {dupes}")
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras ({self.max_loras})")
        return self

    @property
    def cached_adapters(self) -> int:
        """How many adapters one replica holds at most."""
        return self.max_cpu_loras or self.max_loras


def lora_problem(lora: LoraConfig, model_id: str, names: list[str], task: str, source: str) -> str | None:
    """Why this model cannot serve these adapters (its task, names taken, the base), or None."""
    if task != "generate":
        return f"LoRA adapters need a generate model; task is {task!r}"
    taken = sorted({a.name for a in lora.adapters} & set(names))
    if taken:
        return f"adapter name(s) {taken} are already names of the model {model_id!r}"
    embedded = [a.name for a in lora.adapters if a.embedded_name is not None]
    # A local base may be a SmolLM2 checkpoint (e.g. one ``serve-app quantize`` made): its shapes
    # are checked against the adapter's on the replica (serve_app.models.lora_adapters).
    if embedded and source.startswith(EMBEDDED_ADAPTER_PREFIX) and source != EMBEDDED_ADAPTER_BASE:
        return f"embedded adapters {embedded} are made for {EMBEDDED_ADAPTER_BASE}, not for the base {source!r}"
    return None
