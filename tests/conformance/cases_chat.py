"""Chat completions: sampling options, logprobs, streaming, tools and structured outputs."""

from __future__ import annotations

from tests.conformance.cases import PERSON_SCHEMA, QUESTION, TIME_TOOL, WEATHER, WEATHER_TOOL, Case, chat

# Token ids of SmolLM2's tokenizer: "Paris" and " Paris" (banned below), "The".
PARIS, SPACE_PARIS, THE = "38634", "7042", "504"
HARMLESS = {"metadata": {"team": "conformance"}, "store": False, "user": "user-1", "parallel_tool_calls": True}
SAMPLED = {"temperature": 0.8, "seed": 1234}
INCLUDE_USAGE = {"stream_options": {"include_usage": True}}
NAMED = {"type": "function", "function": {"name": "get_weather"}}
TOOL_HISTORY = [
    *WEATHER,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature_c": 21, "sky": "sunny"}'},
]
MULTI_TURN = [
    {"role": "system", "content": "You are a terse geography tutor."},
    *QUESTION,
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]

BASICS = [
    chat("chat_greedy"),
    chat("chat_greedy_stream", stream=True),
    chat("chat_long_stream", stream=True, max_tokens=64, extra_body={"ignore_eos": True}, streams_in_pieces=True),
    chat("chat_multi_turn", messages=MULTI_TURN),
    chat("chat_stop_string", stop=["."], max_tokens=24),
    chat("chat_stop_list_stream", stream=True, stop=[" is", "\n"], max_tokens=24),
    chat("chat_seed_sampled", max_tokens=12, **SAMPLED),
    chat("chat_seed_sampled_stream", stream=True, max_tokens=12, **SAMPLED),
    chat("chat_n3_seeded", n=3, max_tokens=8, **SAMPLED),
    chat("chat_n2_seeded_stream", stream=True, n=2, max_tokens=8, **SAMPLED),
    chat("chat_max_completion_tokens", max_tokens=None, max_completion_tokens=6),
    chat("chat_top_p_top_k", max_tokens=10, top_p=0.9, extra_body={"top_k": 20}, **SAMPLED),
    chat("chat_penalties", frequency_penalty=1.5, presence_penalty=0.5, max_tokens=24),
    chat("chat_min_tokens_ignore_eos", max_tokens=20, extra_body={"min_tokens": 20, "ignore_eos": True}),
    chat(
        "chat_continue_final_message",
        messages=[*QUESTION, {"role": "assistant", "content": "The capital of France is"}],
        extra_body={"add_generation_prompt": False, "continue_final_message": True},
    ),
    chat("chat_harmless_fields", **HARMLESS),
    chat("chat_harmless_fields_stream", stream=True, **HARMLESS),
    chat("chat_stream_include_usage", stream=True, **INCLUDE_USAGE),
    chat("chat_stream_include_usage_n2", stream=True, n=2, max_tokens=8, **INCLUDE_USAGE, **SAMPLED),
]

LOGPROBS = [
    chat("chat_logprobs", logprobs=True, max_tokens=8),
    chat("chat_top_logprobs_5", logprobs=True, top_logprobs=5, max_tokens=8),
    chat("chat_top_logprobs_stream", stream=True, logprobs=True, top_logprobs=3, max_tokens=8),
    chat("chat_logit_bias_ban", logit_bias={PARIS: -100, SPACE_PARIS: -100}, max_tokens=12),
    chat("chat_logit_bias_boost", logit_bias={THE: 5}, max_tokens=8, logprobs=True, top_logprobs=2),
]

TOOLS = [
    chat("tools_auto", messages=WEATHER, tools=[WEATHER_TOOL], tool_choice="auto", max_tokens=24),
    chat("tools_auto_stream", stream=True, messages=WEATHER, tools=[WEATHER_TOOL], tool_choice="auto", max_tokens=24),
    chat("tools_none", messages=WEATHER, tools=[WEATHER_TOOL], tool_choice="none", max_tokens=16),
    chat(
        "tools_required", messages=WEATHER, tools=[WEATHER_TOOL], tool_choice="required", max_tokens=64, tool_call=True
    ),
    chat(
        "tools_required_stream",
        stream=True,
        messages=WEATHER,
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice="required",
        max_tokens=64,
        tool_call=True,
    ),
    chat(
        "tools_named",
        messages=WEATHER,
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice=NAMED,
        max_tokens=64,
        tool_call=True,
    ),
    chat(
        "tools_named_stream",
        stream=True,
        messages=WEATHER,
        tools=[WEATHER_TOOL],
        tool_choice=NAMED,
        max_tokens=64,
        tool_call=True,
    ),
    chat("tools_result_turn", messages=TOOL_HISTORY, tools=[WEATHER_TOOL], tool_choice="auto", max_tokens=24),
    chat("tools_harmless_parallel_false", messages=WEATHER, tools=[WEATHER_TOOL], parallel_tool_calls=False),
]

PERSON = [{"role": "user", "content": "Describe a person as JSON."}]
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA}}
STRUCTURED = [
    chat("structured_json_object", messages=PERSON, response_format={"type": "json_object"}, max_tokens=32),
    chat("structured_json_schema", messages=PERSON, response_format=JSON_SCHEMA, max_tokens=32, json_content=True),
    chat(
        "structured_json_schema_stream",
        stream=True,
        messages=PERSON,
        response_format=JSON_SCHEMA,
        max_tokens=32,
        json_content=True,
    ),
    chat(
        "structured_outputs_json",
        messages=PERSON,
        max_tokens=32,
        extra_body={"structured_outputs": {"json": PERSON_SCHEMA}},
        json_content=True,
    ),
    chat(
        "structured_outputs_choice",
        messages=[{"role": "user", "content": "Is Paris in France? Answer yes or no."}],
        extra_body={"structured_outputs": {"choice": ["yes", "no"]}},
    ),
    chat(
        "structured_outputs_regex",
        messages=[{"role": "user", "content": "Give me a phone number."}],
        extra_body={"structured_outputs": {"regex": "[0-9]{3}-[0-9]{4}"}},
    ),
    chat(
        "structured_outputs_regex_stream",
        stream=True,
        messages=[{"role": "user", "content": "Give me a date."}],
        extra_body={"structured_outputs": {"regex": "20[0-9]{2}-[01][0-9]-[0-3][0-9]"}},
    ),
]

CHAT_CASES: list[Case] = [*BASICS, *LOGPROBS, *TOOLS, *STRUCTURED]
