"""Prompt sets: random prompts of a given token length, the shipped chat-like set, or a file.

Token lengths are exact when a tokenizer is given (random token ids, decoded, re-encoded and cut,
as vLLM's random dataset does); otherwise they are approximated with common English words that
are one token each in the usual BPE vocabularies (checked on SmolLM2's).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, cast

from serve_app.bench.records import Prompt
from serve_app.errors import ServeAppError

DEFAULT_MAX_TOKENS = 128

_WORDS = (
    "the of and to in is was for on that with as by at from his it an were are which this be or has had not but "
    "first one their its new after who they have her she two been other when there all during into school time may "
    "years more most only over city some world would where later up such used many can state about national out "
    "known university united then made"
).split()


class Tokenizer(Protocol):
    """The slice of a Hugging Face tokenizer that prompt generation uses."""

    vocab_size: int
    all_special_ids: list[int]

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class PromptSetError(ServeAppError, ValueError):
    pass


def load_tokenizer(path: str) -> Tokenizer:
    from transformers import AutoTokenizer  # heavy: only when a tokenizer is asked for

    # Hugging Face's tokenizers are typed per backend; each has the slice Tokenizer names.
    return cast(Tokenizer, AutoTokenizer.from_pretrained(path))


def token_counter(tokenizer: Tokenizer) -> Callable[[str], int]:
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


def estimate_tokens(text: str) -> int:
    """About four characters a token for English text."""
    return max(1, math.ceil(len(text) / 4))


def random_prompts(
    count: int, input_len: int, max_tokens: int, seed: int, tokenizer: Tokenizer | None = None
) -> list[Prompt]:
    rng = random.Random(seed)
    if tokenizer is None:
        return [
            Prompt(prompt_tokens=input_len, max_tokens=max_tokens, text=" ".join(rng.choices(_WORDS, k=input_len)))
            for _ in range(count)
        ]
    special = set(tokenizer.all_special_ids)
    allowed = [i for i in range(tokenizer.vocab_size) if i not in special]
    prompts = []
    for _ in range(count):
        # Decoding random ids and encoding again can merge or split tokens: cut to the length asked.
        text = tokenizer.decode(rng.choices(allowed, k=input_len))
        ids = tokenizer.encode(text, add_special_tokens=False)[:input_len]
        text = tokenizer.decode(ids)
        prompts.append(
            Prompt(
                prompt_tokens=len(tokenizer.encode(text, add_special_tokens=False)), max_tokens=max_tokens, text=text
            )
        )
    return prompts


def _prompt_from_json(item: dict[str, Any], max_tokens: int | None, count: Callable[[str], int]) -> Prompt:
    limit = max_tokens or int(item.get("max_tokens") or DEFAULT_MAX_TOKENS)
    if isinstance(item.get("messages"), list):
        messages = tuple({"role": str(m["role"]), "content": str(m["content"])} for m in item["messages"])
        text = Prompt(prompt_tokens=0, max_tokens=limit, messages=messages).as_text()
        return Prompt(prompt_tokens=count(text), max_tokens=limit, messages=messages)
    if isinstance(item.get("prompt"), str):
        return Prompt(prompt_tokens=count(item["prompt"]), max_tokens=limit, text=item["prompt"])
    raise PromptSetError("each line needs a 'prompt' string or a 'messages' list")


def parse_prompt_lines(
    lines: list[str], max_tokens: int | None, tokenizer: Tokenizer | None = None, jsonl: bool = True
) -> list[Prompt]:
    """JSON lines with ``prompt`` or ``messages`` (and optional ``max_tokens``), or plain text lines."""
    count = token_counter(tokenizer) if tokenizer is not None else estimate_tokens
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line) if jsonl else {"prompt": line.rstrip("\n")}
            prompts.append(_prompt_from_json(item, max_tokens, count))
        except (ValueError, KeyError, TypeError) as err:
            raise PromptSetError(f"line {number}: {err}") from None
    if not prompts:
        raise PromptSetError("the prompt set is empty")
    return prompts


def chat_prompts(max_tokens: int | None, seed: int, tokenizer: Tokenizer | None = None) -> list[Prompt]:
    """The shipped chat-like set (``serve_app/data/bench_prompts.jsonl``), shuffled by ``seed``."""
    text = (resources.files("serve_app") / "data" / "bench_prompts.jsonl").read_text(encoding="utf-8")
    prompts = parse_prompt_lines(text.splitlines(), max_tokens, tokenizer)
    random.Random(seed).shuffle(prompts)
    return prompts


def file_prompts(path: Path, max_tokens: int | None, tokenizer: Tokenizer | None = None) -> list[Prompt]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise PromptSetError(f"cannot read {path}: {err.strerror}") from None
    return parse_prompt_lines(lines, max_tokens, tokenizer, jsonl=path.suffix in (".jsonl", ".json"))
