"""Completions (what lm-eval and older clients send), embeddings, tokenize and detokenize."""

from __future__ import annotations

from tests.conformance.cases import (
    CHAT_MODEL,
    EMBED_MODEL,
    LOGLIKELIHOOD,
    PERSON_SCHEMA,
    QUESTION,
    Case,
    completion,
    embedding,
    post,
)

# "The capital of France is" and "Hello world" as SmolLM2 token ids.
FRANCE_IDS = [504, 3575, 282, 4649, 314]
HELLO_IDS = [19556, 905]
SAMPLED = {"temperature": 0.8, "seed": 99}

COMPLETIONS = [
    completion("cmpl_greedy"),
    completion("cmpl_greedy_stream", stream=True),
    completion("cmpl_long_stream", stream=True, max_tokens=64, extra_body={"ignore_eos": True}, streams_in_pieces=True),
    completion("cmpl_prompt_list", prompt=["The capital of France is", "One, two, three,"]),
    completion("cmpl_prompt_list_stream", stream=True, prompt=["The capital of France is", "One, two, three,"]),
    completion("cmpl_token_ids", prompt=FRANCE_IDS),
    completion("cmpl_token_id_lists", prompt=[FRANCE_IDS, HELLO_IDS]),
    completion("cmpl_stop", prompt="One, two, three,", stop=[","], max_tokens=16),
    completion("cmpl_seed_sampled", max_tokens=12, **SAMPLED),
    completion("cmpl_n2_seeded", n=2, **SAMPLED),
    completion("cmpl_n2_seeded_stream", stream=True, n=2, **SAMPLED),
    completion("cmpl_best_of", best_of=2, n=1, **SAMPLED),
    completion("cmpl_logit_bias", logit_bias={"7042": -100}, max_tokens=6),
    completion("cmpl_harmless_fields", user="user-1", extra_body={"metadata": {"team": "conformance"}, "store": False}),
    completion("cmpl_stream_include_usage", stream=True, stream_options={"include_usage": True}),
    completion("cmpl_structured_choice", extra_body={"structured_outputs": {"choice": [" Paris", " Lyon"]}}),
    completion(
        "cmpl_response_format_json_schema",
        prompt="A person as JSON:",
        max_tokens=32,
        extra_body={"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON_SCHEMA}}},
    ),
]

LOGPROBS = [
    completion("cmpl_logprobs_1", logprobs=1),
    completion("cmpl_logprobs_5", logprobs=5),
    completion("cmpl_logprobs_stream", stream=True, logprobs=3),
    completion("cmpl_loglikelihood", prompt="The capital of France is Paris", **LOGLIKELIHOOD),
    completion(
        "cmpl_loglikelihood_batch",
        prompt=["The capital of France is Paris", "The capital of France is Berlin"],
        **LOGLIKELIHOOD,
    ),
    completion("cmpl_loglikelihood_token_ids", prompt=[*FRANCE_IDS, 7042], **LOGLIKELIHOOD),
    completion("cmpl_echo_logprobs_generate", echo=True, logprobs=2, max_tokens=4),
    completion("cmpl_echo_without_logprobs", echo=True, max_tokens=4),
]

SENTENCES = ["The capital of France is Paris.", "Bananas are yellow.", "Le ciel est bleu."]
EMBEDDINGS = [
    # The SDK asks for base64 unless told otherwise, and decodes it into floats.
    embedding("embed_base64_sdk_default", input="The capital of France is Paris."),
    embedding("embed_float", input="The capital of France is Paris.", encoding_format="float"),
    embedding("embed_batch_base64", input=SENTENCES),
    embedding("embed_batch_float", input=SENTENCES, encoding_format="float"),
    embedding("embed_token_ids", input=[[101, 7592, 2088, 102]], encoding_format="float"),
    embedding("embed_user_field", input="hello", user="user-1"),
]

TOKENIZE = [
    post("tokenize_prompt", "/tokenize", {"model": CHAT_MODEL, "prompt": "Hello world, hello Paris."}),
    post(
        "tokenize_prompt_token_strs",
        "/tokenize",
        {"model": CHAT_MODEL, "prompt": "Hello world", "add_special_tokens": False, "return_token_strs": True},
    ),
    post("tokenize_chat_messages", "/tokenize", {"model": CHAT_MODEL, "messages": QUESTION}),
    post(
        "tokenize_chat_no_generation_prompt",
        "/tokenize",
        {"model": CHAT_MODEL, "messages": QUESTION, "add_generation_prompt": False},
    ),
    post("tokenize_embed_model", "/tokenize", {"model": EMBED_MODEL, "prompt": "Hello world"}, server="embed"),
    post("detokenize", "/detokenize", {"model": CHAT_MODEL, "tokens": FRANCE_IDS}),
    post("detokenize_special_tokens", "/detokenize", {"model": CHAT_MODEL, "tokens": [1, 9690, 198, 2]}),
]

OTHER_CASES: list[Case] = [*COMPLETIONS, *LOGPROBS, *EMBEDDINGS, *TOKENIZE]
