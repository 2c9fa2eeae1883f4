"""Scoring of ``facts_qa.yaml`` (loaded by lm-eval from this folder; standard library only).

The chat model answers in a sentence ("The capital of France is Paris."), so an answer counts when
one of the accepted answers appears in the reply as a whole word, case ignored."""

from __future__ import annotations

import re


def contains_answer(response: str, answers: list[str]) -> bool:
    reply = response.lower()
    return any(re.search(rf"\b{re.escape(answer.lower())}\b", reply) for answer in answers)


def process_results(doc: dict, results: list[str]) -> dict[str, int]:
    return {"contains": int(contains_answer(results[0], doc["answers"]))}
