"""The comparison rules themselves, on made-up answers (no server): a difference the suite must catch
is caught, and what may legitimately differ does not fail."""

from __future__ import annotations

from tests.conformance.cases import chat
from tests.conformance.compare import answer_problems, diff, error_shape_problem, fold_stream, status_problem
from tests.conformance.drivers import Outcome

CASE = chat("unit")
STREAM = chat("unit_stream", stream=True)
LONG_STREAM = chat("unit_long_stream", stream=True, streams_in_pieces=True)
HUNG = chat("unit_hung", stack_status=400, vllm_hangs=True)


def error(status: int, **overrides: object) -> Outcome:
    body = {"error": {"message": "bad", "type": "BadRequestError", "param": None, "code": status} | overrides}
    return Outcome(status, body)


def test_statuses() -> None:
    assert status_problem(CASE, error(400), error(400), target_is_stack=True) is None
    assert status_problem(CASE, Outcome(200, {}), error(400), target_is_stack=True) == "statuses differ"
    assert status_problem(CASE, error(400), error(422), target_is_stack=True) == "statuses differ"
    # Where vLLM fails (5xx, no answer), a 4xx from the stack is stricter, so it is fine; a 5xx is not.
    assert status_problem(CASE, Outcome("timeout", None), error(400), target_is_stack=True) is None
    assert status_problem(CASE, Outcome(500, None), error(400), target_is_stack=True) is None
    assert status_problem(CASE, Outcome(500, None), Outcome(502, None), target_is_stack=True) == "statuses differ"
    assert status_problem(HUNG, None, error(400), target_is_stack=True) is None
    assert status_problem(HUNG, None, Outcome("timeout", None), target_is_stack=True) is not None


def test_error_shape() -> None:
    assert error_shape_problem(error(400)) is None
    assert error_shape_problem(error(404, param="model")) is None
    assert error_shape_problem(Outcome(404, {"detail": "Not Found"})) is not None
    assert error_shape_problem(error(400, code="model_not_found")) is None, "OpenAI's reason codes are strings"
    assert error_shape_problem(error(400, code=None)) is None
    assert error_shape_problem(error(400, code=500)) is not None
    assert error_shape_problem(Outcome(400, {"error": {"message": "x", "type": "t", "code": 400}})) is not None
    assert error_shape_problem(Outcome(400, {"error": {"message": "", "type": "t", "param": None, "code": 400}}))


def test_diff_catches_text_logprob_and_key_differences() -> None:
    answer = {"id": "a", "created": 1, "choices": [{"text": " Paris", "logprob": -0.5}], "usage": {"n": 3}}
    same = {**answer, "id": "b", "created": 2, "choices": [{"text": " Paris", "logprob": -0.5004}]}
    assert diff(answer, same, tol=1e-3) == []
    assert diff(answer, {**same, "choices": [{"text": " Lyon", "logprob": -0.5}]}, tol=1e-3)
    assert diff(answer, {**same, "choices": [{"text": " Paris", "logprob": -0.502}]}, tol=1e-3)
    assert diff(answer, {**same, "extra": None}, tol=1e-3)
    assert diff(answer, {**same, "usage": {"n": 4}}, tol=1e-3)


def test_tool_arguments_compare_as_json() -> None:
    a = {"arguments": '{"city": "Paris"}'}
    assert diff(a, {"arguments": '{ "city":"Paris" }'}, tol=0) == []
    assert diff(a, {"arguments": '{"city": "Lyon"}'}, tol=0)


def test_top_logprob_ties_may_swap() -> None:
    a = {"top_logprobs": [{"token": "x", "logprob": -1.0}, {"token": "y", "logprob": -1.0}]}
    b = {"top_logprobs": [{"token": "y", "logprob": -1.0}, {"token": "x", "logprob": -1.0}]}
    assert diff(a, b, tol=1e-3) == []


def chunk(index: int, content: str, finish: str | None = None) -> dict[str, object]:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": index, "delta": {"content": content}, "finish_reason": finish}],
    }


def test_streams_fold_independent_of_chunking_and_interleaving() -> None:
    tokens = [chunk(0, "The"), chunk(1, "A"), chunk(0, " capital"), chunk(1, " city", "length"), chunk(0, ".", "stop")]
    merged = [chunk(0, "The capital"), chunk(1, "A city", "length"), chunk(0, ".", "stop")]
    assert fold_stream(tokens)["choices"][0]["delta"]["content"] == "The capital."
    assert answer_problems(STREAM, Outcome(200, tokens), Outcome(200, merged)) == []
    other = [chunk(0, "The capital!", "stop"), chunk(1, "A city", "length")]
    assert answer_problems(STREAM, Outcome(200, tokens), Outcome(200, other))


def test_buffered_stream_is_caught() -> None:
    tokens = [chunk(0, word) for word in ("The", " capital", " of", " France")] + [chunk(0, ".", "stop")]
    buffered = [chunk(0, "The capital of France.", "stop")]
    assert "stream as it generates" in " ".join(
        answer_problems(LONG_STREAM, Outcome(200, tokens), Outcome(200, buffered))
    )


def test_a_short_stream_may_arrive_whole() -> None:
    """vLLM folds the tokens its reader has not taken into one chunk: on a busy machine a short answer
    arrives whole, which is not buffering."""
    tokens = [chunk(0, word) for word in ("The", " capital", " of", " France")] + [chunk(0, ".", "stop")]
    folded = [chunk(0, "The capital of France.", "stop")]
    assert answer_problems(STREAM, Outcome(200, tokens), Outcome(200, folded)) == []


def test_tool_call_deltas_merge_by_index() -> None:
    def tool_chunk(**function: str) -> dict[str, object]:
        return {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": function}]}}]}

    folded = fold_stream(
        [tool_chunk(name="get_weather"), tool_chunk(arguments='{"city": '), tool_chunk(arguments='"Paris"}')]
    )
    call = folded["choices"][0]["delta"]["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}


def test_a_choice_closed_in_one_chunk_keeps_the_same_fields() -> None:
    """vLLM adds ``system_fingerprint`` to the chunk that closes a choice; on a busy machine every token
    of a choice can land in that chunk, so the field set compares as a union, not chunk by chunk."""
    fingerprint = {"system_fingerprint": "vllm"}
    tokens = [chunk(0, "The"), chunk(1, "A"), chunk(0, " capital.", "stop") | fingerprint]
    tokens.append(chunk(1, " city", "length") | fingerprint)
    merged = [chunk(0, "The capital.", "stop") | fingerprint, chunk(1, "A city", "length") | fingerprint]
    assert answer_problems(STREAM, Outcome(200, tokens), Outcome(200, merged)) == []
    assert answer_problems(
        STREAM,
        Outcome(200, tokens),
        Outcome(200, [{k: v for k, v in c.items() if k != "system_fingerprint"} for c in merged]),
    )
