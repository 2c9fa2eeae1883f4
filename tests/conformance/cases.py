"""What a conformance case is, the shared prompts and builders, and the full list of cases.

A case is one request, sent unchanged to plain vLLM (the reference) and to the target (the stack).
``api`` says how it is sent:

- ``chat``, ``completions``, ``embeddings``: the official SDK's ``create`` with ``body`` as keyword
  arguments (vLLM's own fields go in ``extra_body``, as an SDK user sends them);
- ``post``: the SDK's generic ``client.post(path, body=...)`` for vLLM's routes the SDK has no method
  for (``/tokenize``, ``/detokenize``) and for bodies ``create`` would not send (wrong types, missing
  fields);
- ``raw``: httpx with ``body`` as bytes, for bodies that are not JSON at all: the SDK always
  serializes a Python object, so it cannot send malformed JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

CHAT_MODEL = "smollm2-135m-instruct"
EMBED_MODEL = "all-minilm-l6-v2"

Api = Literal["chat", "completions", "embeddings", "post", "raw"]

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the local time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
PERSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
# lm-eval's loglikelihood request: score a context + continuation without generating anything.
LOGLIKELIHOOD = {"echo": True, "logprobs": 1, "max_tokens": 0, "temperature": 0}
# Well past the chat model's and the embedding model's max_model_len in tokens, whatever the tokenizer.
TOO_LONG = "word " * 3000


@dataclass(frozen=True)
class Case:
    id: str
    api: Api
    body: dict[str, Any] | bytes
    stream: bool = False
    path: str = ""  # the route, for ``post`` and ``raw``
    method: str = "POST"  # for ``raw``
    server: Literal["chat", "embed"] = "chat"
    # Largest allowed difference between two floats (logprobs, embeddings).
    tol: float = 1e-3
    # The message content must parse as JSON, equally on both sides.
    json_content: bool = False
    # The reference must answer with at least one parsed tool call.
    tool_call: bool = False
    # The target's stream must come in several chunks when the reference's does. Only long answers
    # set it: vLLM folds the tokens its reader has not taken yet into one chunk, so on a busy machine
    # a short answer can arrive whole from either server.
    streams_in_pieces: bool = False
    # The stack's own, stricter answer where it deliberately differs from plain vLLM (its caps).
    stack_status: int | None = None
    # Plain vLLM does not answer in time: the reference is not asked, and with two plain servers the
    # case is skipped; the stack must answer ``stack_status`` quickly.
    vllm_hangs: bool = False
    # Plain vLLM answers with FastAPI's ``{"detail": ...}``, not an OpenAI error body: the stack's
    # body must still be OpenAI-shaped and its status may be another 4xx.
    vllm_detail_body: bool = False
    timeout_s: float = 120.0


def _split(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The request body, and the keys among ``body`` that are Case options (``json_content``, ...)."""
    options = {f.name for f in fields(Case)} - {"id", "api", "body", "stream"}
    return {k: v for k, v in body.items() if k not in options}, {k: v for k, v in body.items() if k in options}


def chat(case_id: str, stream: bool = False, **body: Any) -> Case:
    """A chat completion: greedy, 16 new tokens, the capital question, unless ``body`` says otherwise."""
    request, options = _split(body)
    base = {"model": CHAT_MODEL, "messages": QUESTION, "max_tokens": 16, "temperature": 0}
    return Case(case_id, "chat", base | request, stream=stream, **options)


def completion(case_id: str, stream: bool = False, **body: Any) -> Case:
    """A completion: greedy, 8 new tokens, a prompt about France, unless ``body`` says otherwise."""
    request, options = _split(body)
    base = {"model": CHAT_MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    return Case(case_id, "completions", base | request, stream=stream, **options)


def embedding(case_id: str, **body: Any) -> Case:
    return Case(case_id, "embeddings", {"model": EMBED_MODEL} | body, server="embed", tol=1e-4)


def post(case_id: str, path: str, body: dict[str, Any], server: Literal["chat", "embed"] = "chat", **kw: Any) -> Case:
    return Case(case_id, "post", body, path=path, server=server, **kw)


def raw(case_id: str, path: str, body: bytes, **kw: Any) -> Case:
    return Case(case_id, "raw", body, path=path, **kw)


def all_cases() -> list[Case]:
    from tests.conformance.cases_bad import BAD_CASES
    from tests.conformance.cases_chat import CHAT_CASES
    from tests.conformance.cases_other import OTHER_CASES

    return [*CHAT_CASES, *OTHER_CASES, *BAD_CASES]
