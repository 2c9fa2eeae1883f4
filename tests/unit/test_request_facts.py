"""The router's light read of an OpenAI body (serve_app.core.request_facts): what it takes from a
request, its caps, and the usage it asks streams for. Fields of the wrong type are vLLM's to refuse."""

from __future__ import annotations

import pytest

from serve_app.core.request_facts import CHARS_PER_TOKEN, check_limits, read_facts


def test_chat_messages_make_one_prompt_with_roles_and_text_parts() -> None:
    facts = read_facts(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]},
            ],
        }
    )
    assert facts.prompt_texts == ("system:be brief\nuser:hi",)
    assert facts.routing_text == "system:be brief\nuser:hi"


@pytest.mark.parametrize(
    ("prompt", "texts"),
    [
        ("once", ("once",)),
        (["a", "bb"], ("a", "bb")),
        ([1, 2, 3], ("1 2 3",)),
        ([[1, 2], [3]], ("1 2", "3")),
        (None, ("",)),
        ([], ("",)),
    ],
)
def test_completion_prompts_of_every_shape(prompt: object, texts: tuple[str, ...]) -> None:
    assert read_facts({"prompt": prompt}).prompt_texts == texts


def test_embedding_input_is_read_like_a_prompt() -> None:
    assert read_facts({"input": ["x", "y"]}).prompt_texts == ("x", "y")


def test_cost_counts_every_prompt_and_every_completion_of_each() -> None:
    text = "x" * (10 * CHARS_PER_TOKEN)
    facts = read_facts({"prompt": [text, text], "max_tokens": 5, "n": 2, "best_of": 3})
    assert facts.cost(default_max_tokens=100) == 2 * 11 + 2 * 3 * 5
    assert read_facts({"prompt": "ab"}).cost(default_max_tokens=7) == 1 + 7


def test_fields_of_the_wrong_type_are_left_for_the_server() -> None:
    facts = read_facts({"model": 5, "n": "3", "max_tokens": True, "stream": "yes", "stream_options": "x"})
    assert (facts.model, facts.n, facts.max_tokens) == (None, 1, None)
    assert check_limits(facts, max_n=1, max_tokens_limit=1) is None


def test_max_completion_tokens_wins_and_is_named_when_over_the_cap() -> None:
    facts = read_facts({"max_completion_tokens": 50, "max_tokens": 10})
    breach = check_limits(facts, max_n=4, max_tokens_limit=32)
    assert facts.max_tokens == 50 and breach is not None and breach.param == "max_completion_tokens"


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"n": 5}, "n"), ({"best_of": 5}, "best_of"), ({"max_tokens": 33}, "max_tokens"), ({"n": 4}, None)],
)
def test_caps(fields: dict, param: str | None) -> None:
    breach = check_limits(read_facts(fields | {"max_tokens": fields.get("max_tokens", 32)}), 4, 32)
    assert (breach.param if breach else None) == param
