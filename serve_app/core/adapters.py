"""Which LoRA adapters the app serves, by name (pure: no Ray, no vLLM).

Static adapters come from the config and are loaded on every replica at start. Dynamic ones are
added and removed through the router (``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``):
this directory is one router replica's copy of the app's record of them
(``serve_app.core.adapter_catalog``), so a removed adapter is refused (404) whichever replicas
still hold it, and a replica that has not loaded one yet loads it from the path carried by the
request (see ``serve_app.replica.adapters``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from serve_app.config_engine import EngineConfig


@dataclass(frozen=True)
class AdapterRef:
    name: str
    model_id: str  # the base
    path: str | None = None  # set for dynamic adapters: where a replica loads it from


@dataclass(frozen=True)
class Refusal:
    status: int
    message: str
    code: str


class AdapterDirectory:
    """Adapter name -> its base model and, for a dynamic one, its path. Bounded per model."""

    def __init__(self, models: Sequence[EngineConfig]) -> None:
        self._models = {m.id: m for m in models}
        self._names = {n for m in models for n in (m.id, *m.openai_server.served_model_aliases)}
        self._static = {a.name: AdapterRef(a.name, m.id) for m in models if m.lora for a in m.lora.adapters}
        self._dynamic: dict[str, AdapterRef] = {}

    @property
    def takes_dynamic(self) -> bool:
        """Whether any model takes adapters at run time (else there is no catalog to read)."""
        return any(m.lora is not None and m.lora.dynamic for m in self._models.values())

    def find(self, name: str) -> AdapterRef | None:
        return self._static.get(name) or self._dynamic.get(name)

    def is_static(self, name: str) -> bool:
        return name in self._static

    def all_dynamic(self) -> tuple[AdapterRef, ...]:
        return tuple(self._dynamic.values())

    def replace_dynamic(self, adapters: Sequence[AdapterRef]) -> None:
        """Take the catalog's adapters, less any this config cannot serve: the catalog outlives a
        redeploy, whose config may no longer take adapters on that model or may use the name."""
        self._dynamic = {
            a.name: a
            for a in adapters
            if self._takes(a.model_id) and a.name not in self._names and a.name not in self._static
        }

    def limit(self, model_id: str) -> int:
        lora = self._models[model_id].lora
        return lora.max_dynamic_adapters if lora is not None else 0

    def _takes(self, model_id: str) -> bool:
        model = self._models.get(model_id)
        return model is not None and model.lora is not None and model.lora.dynamic

    def dynamic(self, model_id: str) -> list[AdapterRef]:
        return [a for a in self._dynamic.values() if a.model_id == model_id]

    def static(self, model_id: str) -> list[AdapterRef]:
        return [a for a in self._static.values() if a.model_id == model_id]

    def refuse_load(self, name: str, path: str, model_id: str) -> Refusal | None:
        """Why ``name`` cannot be added on ``model_id`` (vLLM's wording where vLLM has the rule)."""
        model = self._models.get(model_id)
        if model is None:
            return Refusal(404, f"The model `{model_id}` does not exist.", "model_not_found")
        lora = model.lora
        if lora is None or not lora.dynamic:
            message = f"model {model_id!r} does not take adapters at run time (models[].lora.dynamic)"
            return Refusal(400, message, "adapters_not_dynamic")
        if not name or not path:
            return Refusal(400, "Both 'lora_name' and 'lora_path' must be provided.", "invalid_request")
        if name in self._names:
            return Refusal(400, f"The lora adapter '{name}' conflicts with a served base model.", "name_taken")
        if name in self._static or name in self._dynamic:
            return self.catalog_refusal("taken", name, model_id)
        if len(self.dynamic(model_id)) >= lora.max_dynamic_adapters:
            return self.catalog_refusal("limit", name, model_id)
        return None

    def catalog_refusal(self, reason: str, name: str, model_id: str) -> Refusal:
        """The answer to a load the catalog refused (``AdapterCatalog.add``'s reason)."""
        if reason == "taken":
            return Refusal(400, f"The lora adapter '{name}' has already been loaded.", "name_taken")
        limit = self.limit(model_id)
        message = f"model {model_id!r} holds {limit} adapters added at run time, its limit"
        return Refusal(400, message + " (models[].lora.max_dynamic_adapters); unload one first", "adapter_limit")

    def refuse_unload(self, name: str) -> Refusal | None:
        """Why ``name`` cannot be unloaded at run time (it is in the config), or None: a run-time
        adapter is unloaded in the app's catalog (``serve_app.router.adapter_view``)."""
        if name in self._static:
            return Refusal(400, f"adapter {name!r} is in the config; a redeploy removes it", "static_adapter")
        return None


def not_found(name: str) -> Refusal:
    return Refusal(404, f"The lora adapter '{name}' cannot be found.", "model_not_found")


def reconcile_cards(cards: list[dict[str, Any]], model_id: str, directory: AdapterDirectory) -> list[dict[str, Any]]:
    """A model's cards from one replica's vLLM, made to list exactly the adapters the directory
    serves: cards of adapters removed since are dropped; dynamic ones that replica has not loaded
    get a card like vLLM's own (id, root = path, parent = base)."""
    static = {a.name for a in directory.static(model_id)}
    dynamic = {a.name: a for a in directory.dynamic(model_id)}
    kept = [c for c in cards if c.get("parent") is None or c.get("id") in static or c.get("id") in dynamic]
    listed = {c.get("id") for c in kept}
    template = {"object": "model", "created": int(time.time()), "owned_by": "vllm", "max_model_len": None}
    for name, ref in dynamic.items():
        if name not in listed:
            kept.append(template | {"id": name, "root": ref.path, "parent": model_id})
    return kept
