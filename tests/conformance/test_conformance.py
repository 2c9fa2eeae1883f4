"""Differential conformance: every case sent to plain vLLM and to the target, answers compared by
tests/conformance/compare.py's rules."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conformance.cases import Case, all_cases
from tests.conformance.compare import answer_problems, error_shape_problem, status_problem
from tests.conformance.conftest import Sides
from tests.conformance.drivers import Outcome, send

pytestmark = pytest.mark.integration

CASES = all_cases()


def _describe(ref: Outcome | None, tgt: Outcome) -> str:
    ref_text = "not asked" if ref is None else f"{ref.status} {ref.text[:600]}"
    return f"\n  plain vLLM: {ref_text}\n  target:     {tgt.status} {tgt.text[:600]}"


def send_both(case: Case, sides: Sides) -> tuple[Outcome | None, Outcome]:
    """The case sent to both sides at once (each side gets this one request: no batching that the
    other side lacks); the reference is not asked where plain vLLM would not answer in time."""
    if case.vllm_hangs:
        return None, send(case, sides.target)
    with ThreadPoolExecutor(1) as pool:
        ref = pool.submit(send, case, sides.reference)
        tgt = send(case, sides.target)
        return ref.result(), tgt


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_same_answer_as_plain_vllm(case: Case, sides: Sides) -> None:
    if case.vllm_hangs and not sides.target.is_stack:
        pytest.skip("plain vLLM does not answer this in time; only the stack's refusal is checked")
    ref, tgt = send_both(case, sides)
    problem = status_problem(case, ref, tgt, sides.target.is_stack)
    assert problem is None, problem + _describe(ref, tgt)
    if not tgt.ok:
        # The target's error body is OpenAI-shaped; where vLLM's own is (most cases), so is the reference's.
        if sides.target.is_stack or not case.vllm_detail_body:
            assert (shape := error_shape_problem(tgt)) is None, shape + _describe(ref, tgt)
        if ref is not None and not ref.ok and not case.vllm_detail_body:
            assert (shape := error_shape_problem(ref)) is None, "reference: " + shape + _describe(ref, tgt)
        return
    assert ref is not None
    problems = answer_problems(case, ref, tgt)
    assert not problems, "\n".join(problems[:20]) + _describe(ref, tgt)


def test_same_engine_fingerprint(sides: Sides) -> None:
    """vLLM's ``system_fingerprint`` hashes the engine config that shapes outputs (model, dtype,
    attention backend, ...): the stack's replica engine must be configured like plain vLLM's."""
    case = next(c for c in CASES if c.id == "chat_greedy")
    ref, tgt = send(case, sides.reference), send(case, sides.target)
    assert ref.ok and tgt.ok, _describe(ref, tgt)
    assert tgt.body.get("system_fingerprint") == ref.body.get("system_fingerprint")
