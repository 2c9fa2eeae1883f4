"""Child-process entry point: train a small LoRA adapter for a causal LM with plain torch (no peft)
and write it in peft's layout (``adapter_config.json`` + ``adapter_model.safetensors``), which vLLM
loads with ``--lora-modules`` or ``/v1/load_lora_adapter``.

Usage: python -m serve_app.models.lora_train BASE_DIR OUT_DIR --examples FILE.jsonl [--steps N] ...

Each line of the examples file is ``{"question": ..., "answer": ...}``; the question goes through the
base model's own chat template (as vLLM renders a chat request), the loss is on the answer only.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Every linear layer of a Llama block: the adapter changes behaviour within a few dozen steps.
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class TrainSettings:
    rank: int = 8
    alpha: int = 16
    steps: int = 24
    batch_size: int = 4
    learning_rate: float = 3e-3
    seed: int = 0


def peft_adapter_config(settings: TrainSettings, base_model: str) -> dict[str, Any]:
    """The adapter_config.json peft writes for a plain LoRA (the fields vLLM's PEFTHelper reads)."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": settings.rank,
        "lora_alpha": settings.alpha,
        "lora_dropout": 0.0,
        "target_modules": list(TARGET_MODULES),
        "bias": "none",
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
    }


def _lora_layer(base: Any, rank: int, alpha: int) -> Any:
    import torch
    from torch import nn

    class LoraLinear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base = base
            self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
            self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))  # starts as the base model
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # peft's default init
            self.scale = alpha / rank

        def forward(self, x: Any) -> Any:
            return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scale

    return LoraLinear()


def attach_lora(model: Any, settings: TrainSettings) -> dict[str, Any]:
    """Wrap every target linear layer; returns {module path: its LoRA layer}. The base is frozen."""
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = {}
    for name, module in list(model.named_modules()):
        parent_name, _, leaf = name.rpartition(".")
        if leaf in TARGET_MODULES:
            layer = _lora_layer(module, settings.rank, settings.alpha)
            setattr(model.get_submodule(parent_name), leaf, layer)
            wrapped[name] = layer
    return wrapped


def lora_state_dict(wrapped: dict[str, Any]) -> dict[str, Any]:
    """peft's key layout: ``base_model.model.<module path>.lora_A.weight`` (rank x in) and ``lora_B`` (out x rank)."""
    state = {}
    for name, layer in wrapped.items():
        state[f"{PEFT_PREFIX}{name}.lora_A.weight"] = layer.lora_A.detach().contiguous()
        state[f"{PEFT_PREFIX}{name}.lora_B.weight"] = layer.lora_B.detach().contiguous()
    return state


def encode_examples(tokenizer: Any, examples: list[dict[str, str]]) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per example: the chat-templated question, then the answer and the end of turn."""
    encoded = []
    for ex in examples:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": ex["question"]}], add_generation_prompt=True, tokenize=False
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(ex["answer"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
        encoded.append((prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids))
    return encoded


def _batch(items: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(ids) for ids, _ in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, (x, y) in enumerate(items):
        ids[row, : len(x)], labels[row, : len(y)], mask[row, : len(x)] = torch.tensor(x), torch.tensor(y), 1
    return ids, labels, mask


def train(base: Path, out: Path, examples: list[dict[str, str]], settings: TrainSettings, quiet: bool) -> float:
    """Train and write the adapter into ``out``; returns the last step's loss."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    wrapped = attach_lora(model, settings)
    params = [p for layer in wrapped.values() for p in (layer.lora_A, layer.lora_B)]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)
    data = encode_examples(tokenizer, examples)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    loss_value = float("nan")
    model.train()
    for step in range(settings.steps):
        ids, labels, mask = _batch(rng.sample(data, min(settings.batch_size, len(data))), pad_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_value = float(loss)
        if not quiet:
            print(f"step {step + 1}/{settings.steps} loss {loss_value:.3f}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    save_file(lora_state_dict(wrapped), str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps(peft_adapter_config(settings, str(base)), indent=2))
    return loss_value


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("base", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--examples", type=Path, required=True)
    parser.add_argument("--settings", default="{}", help="TrainSettings fields as JSON")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    settings = TrainSettings(**json.loads(args.settings))
    examples = [json.loads(line) for line in args.examples.read_text().splitlines() if line.strip()]
    loss = train(args.base, args.out, examples, settings, args.quiet)
    (args.out / "training.json").write_text(json.dumps({"settings": asdict(settings), "final_loss": loss}, indent=2))


if __name__ == "__main__":
    main()
