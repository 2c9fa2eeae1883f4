"""Bad inputs: each must get the same 4xx as from plain vLLM (or a stricter 4xx where vLLM fails), with
an OpenAI-shaped error body. Sent with the SDK where it can send them; ``post`` for bodies with wrong
types or missing fields (``create`` would not build them), ``raw`` (httpx) for bodies that are not JSON."""

from __future__ import annotations

from tests.conformance.cases import (
    CHAT_MODEL,
    EMBED_MODEL,
    QUESTION,
    TOO_LONG,
    WEATHER_TOOL,
    Case,
    chat,
    completion,
    embedding,
    post,
    raw,
)

CHAT_PATH = "/v1/chat/completions"
GOOD_CHAT = {"model": CHAT_MODEL, "messages": QUESTION, "max_tokens": 4}
LONG_MESSAGES = [{"role": "user", "content": TOO_LONG}]


def bad_body(case_id: str, **body: object) -> Case:
    """A chat request whose body ``create`` would not build: sent as JSON with the SDK's ``post``."""
    return post(case_id, CHAT_PATH, {k: v for k, v in (GOOD_CHAT | body).items() if v is not ...})


MALFORMED = [
    raw("bad_json_syntax", CHAT_PATH, b'{"model": "smollm2-135m-instruct", "messages": [{"role": '),
    raw("bad_json_trailing_comma", CHAT_PATH, b'{"model": "smollm2-135m-instruct", "messages": [],}'),
    raw("bad_json_empty_body", CHAT_PATH, b""),
    raw("bad_json_array_body", CHAT_PATH, b"[]"),
    # FastAPI's body parsing gives up on deep nesting (its own {"detail": ...}) before vLLM's handler runs.
    raw("bad_json_deeply_nested", CHAT_PATH, b'{"a":' * 5000 + b"1" + b"}" * 5000, vllm_detail_body=True),
    # Plain vLLM answers these with FastAPI's ``{"detail": ...}``; the stack with the same status, OpenAI-shaped.
    raw("bad_get_unknown_path", "/v1/nothing", b"", method="GET", vllm_detail_body=True),
    raw("bad_get_on_post_route", CHAT_PATH, b"", method="GET", vllm_detail_body=True),
    raw("bad_put_unknown_path", "/v1/nothing", b"{}", method="PUT", vllm_detail_body=True),
]

WRONG_FIELDS = [
    bad_body("bad_messages_not_a_list", messages="hi"),
    bad_body("bad_messages_missing", messages=...),
    bad_body("bad_max_tokens_string", max_tokens="eight"),
    bad_body("bad_n_fractional", n=2.5),
    bad_body("bad_stop_wrong_type", stop=5),
    bad_body("bad_stop_too_many", stop=["a", "b", "c", "d", "e"]),
    bad_body("bad_seed_over_int64", seed=2**64),
    bad_body("bad_tools_without_function", tools=[{"type": "function"}]),
    bad_body("bad_response_format_type", response_format={"type": "bogus"}),
    post("bad_completions_negative_token_id", "/v1/completions", {"model": CHAT_MODEL, "prompt": [-1]}),
    post(
        "bad_embeddings_encoding_format",
        "/v1/embeddings",
        {"model": EMBED_MODEL, "input": "x", "encoding_format": "hex"},
        server="embed",
    ),
    post("bad_detokenize_tokens_string", "/detokenize", {"model": CHAT_MODEL, "tokens": "x"}),
]

UNKNOWN_MODEL = [
    chat("bad_unknown_model_chat", model="no-such-model"),
    completion("bad_unknown_model_completions", model="no-such-model"),
    embedding("bad_unknown_model_embeddings", model="no-such-model", input="x"),
    post("bad_unknown_model_tokenize", "/tokenize", {"model": "no-such-model", "prompt": "x"}),
]

OUT_OF_RANGE = [
    chat("bad_max_tokens_negative", max_tokens=-1),
    completion("bad_completions_max_tokens_zero_without_echo", max_tokens=0),
    chat("bad_max_tokens_over_context", max_tokens=5000),
    chat("bad_temperature_too_high", temperature=5),
    chat("bad_temperature_negative", temperature=-1),
    chat("bad_top_p_too_high", top_p=2),
    chat("bad_top_k_negative", extra_body={"top_k": -5}),
    chat("bad_frequency_penalty", frequency_penalty=5),
    chat("bad_n_zero", n=0),
    chat("bad_n_greedy_above_one", n=2),
    chat("bad_top_logprobs_too_many", logprobs=True, top_logprobs=50),
    chat("bad_top_logprobs_without_logprobs", top_logprobs=3),
    completion("bad_completions_logprobs_too_many", logprobs=30),
    chat("bad_min_tokens_over_max_tokens", max_tokens=4, extra_body={"min_tokens": 10}),
    chat("bad_logit_bias_key", logit_bias={"abc": 1}),
    chat("bad_logit_bias_out_of_vocab", logit_bias={"999999": 1}),
    chat("bad_stream_options_without_stream", stream_options={"include_usage": True}),
    chat("bad_temperature_stream", stream=True, temperature=5),
]

WRONG_CONTENT = [
    chat("bad_messages_empty", messages=[]),
    chat("bad_prompt_too_long_chat", messages=LONG_MESSAGES),
    completion("bad_prompt_too_long_completions", prompt=TOO_LONG),
    completion("bad_prompt_empty", prompt=""),
    completion("bad_prompt_token_out_of_vocab", prompt=[999999]),
    completion("bad_suffix_unsupported", suffix=" end"),
    embedding("bad_embeddings_input_too_long", input=TOO_LONG),
    embedding("bad_embeddings_input_empty_list", input=[]),
    embedding("bad_embeddings_dimensions", input="x", dimensions=10),
    chat("bad_tool_choice_without_tools", tool_choice="required"),
    chat(
        "bad_tool_choice_unknown_function",
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "no_such_tool"}},
    ),
    chat("bad_structured_regex", extra_body={"structured_outputs": {"regex": "("}}),
    chat("bad_structured_two_constraints", extra_body={"structured_outputs": {"choice": ["a"], "regex": "a"}}),
    chat(
        "bad_image_on_text_model",
        messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/x.png"}}]}
        ],
    ),
    # An embedding model has no chat route in vLLM: FastAPI's plain 404. The stack must answer OpenAI-shaped.
    Case(
        "bad_chat_on_embedding_model",
        "chat",
        {"model": EMBED_MODEL, "messages": QUESTION, "max_tokens": 4},
        server="embed",
        vllm_detail_body=True,
    ),
]

STACK_CAPS = [
    # The stack caps n at the model's max_n (its default is below 9); plain vLLM serves it.
    chat("bad_n_over_max_n", n=9, temperature=0.8, seed=1, max_tokens=2, stack_status=400),
    # Plain vLLM has no cap on n and works on this for minutes: the stack must refuse it at once.
    chat("bad_n_huge", n=1000, temperature=0.8, max_tokens=8, stack_status=400, vllm_hangs=True, timeout_s=30),
]

BAD_CASES: list[Case] = [*MALFORMED, *WRONG_FIELDS, *UNKNOWN_MODEL, *OUT_OF_RANGE, *WRONG_CONTENT, *STACK_CAPS]
