"""A light read of an OpenAI request body: what admission, replica choice and the router's guards
need (model, n, max_tokens, the prompt's text and size). Pure; vLLM validates the rest.

A field of the wrong type is left for vLLM to refuse with its own 400: this read never fails on
one, it just does not use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Characters per token assumed before tokenization (English text through a BPE tokenizer).
CHARS_PER_TOKEN = 4
# How much of the prompt prefix affinity hashes; more than any policy's prefix_chars.
_ROUTING_TEXT_CHARS = 4096


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text_of_content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _prompt_texts(payload: dict[str, Any]) -> list[str]:
    """The text of every prompt: chat messages, a prompt or input (a string, a list of strings,
    token ids or lists of token ids; ids stand in as their decimal text)."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        parts = [f"{m.get('role')}:{_text_of_content(m.get('content'))}" for m in messages if isinstance(m, dict)]
        return ["\n".join(parts)]
    prompt = payload.get("prompt", payload.get("input"))
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(_int(t) is not None for t in prompt):
            return [" ".join(map(str, prompt))]
        return [" ".join(map(str, p)) if isinstance(p, list) else str(p) for p in prompt]
    return [""]


@dataclass(frozen=True)
class RequestFacts:
    model: str | None
    n: int
    best_of: int | None
    max_tokens: int | None
    prompt_texts: tuple[str, ...]
    max_tokens_field: str = "max_tokens"  # the field the client set it with: an error names that one

    @property
    def routing_text(self) -> str:
        return self.prompt_texts[0][:_ROUTING_TEXT_CHARS]

    def cost(self, default_max_tokens: int) -> int:
        """Expected work in tokens: every prompt, and every completion of each (``n`` of them)."""
        completion = self.max_tokens if self.max_tokens is not None else default_max_tokens
        prompt_tokens = sum(len(t) // CHARS_PER_TOKEN + 1 for t in self.prompt_texts)
        return prompt_tokens + len(self.prompt_texts) * max(self.n, self.best_of or 1) * completion


def read_facts(payload: dict[str, Any]) -> RequestFacts:
    model = payload.get("model")
    max_tokens, max_tokens_field = _int(payload.get("max_completion_tokens")), "max_completion_tokens"
    if max_tokens is None:
        max_tokens, max_tokens_field = _int(payload.get("max_tokens")), "max_tokens"
    return RequestFacts(
        model=model if isinstance(model, str) else None,
        n=_int(payload.get("n")) or 1,
        best_of=_int(payload.get("best_of")),
        max_tokens=max_tokens,
        prompt_texts=tuple(_prompt_texts(payload)),
        max_tokens_field=max_tokens_field,
    )


@dataclass(frozen=True)
class LimitBreach:
    message: str
    param: str


def check_limits(facts: RequestFacts, max_n: int, max_tokens_limit: int) -> LimitBreach | None:
    """The router's caps on top of vLLM: a request past them gets a clear 400 at once (vLLM would
    accept ``n: 1000`` and take longer than any client waits)."""
    if facts.n > max_n:
        return LimitBreach(f"n is {facts.n}; this model allows at most {max_n} choices per request", "n")
    if facts.best_of is not None and facts.best_of > max_n:
        return LimitBreach(f"best_of is {facts.best_of}; this model allows at most {max_n}", "best_of")
    if facts.max_tokens is not None and facts.max_tokens > max_tokens_limit:
        name = facts.max_tokens_field
        return LimitBreach(f"{name} is {facts.max_tokens}; this model allows at most {max_tokens_limit}", name)
    return None
