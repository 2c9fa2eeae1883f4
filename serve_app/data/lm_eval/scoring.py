"""Scoring of ``facts_qa.yaml`` (loaded by lm-eval from this folder; standard library only)."""

from __future__ import annotations

import re
import string

_STRIP = string.punctuation + string.whitespace


def _normalize(text: str) -> str:
    text = text.strip().lower().strip(_STRIP)
    return re.sub(r"^(the|a|an)\s+", "", text)


def score(response: str, answers: list[str]) -> dict[str, int]:
    """exact_match: the whole reply is one of the answers (case, punctuation and a leading article
    ignored); contains: one of the answers appears in the reply as a whole word."""
    reply = _normalize(response)
    exact = any(reply == _normalize(answer) for answer in answers)
    contains = any(re.search(rf"\b{re.escape(answer.lower())}\b", response.lower()) for answer in answers)
    return {"exact_match": int(exact), "contains": int(contains)}


def process_results(doc: dict, results: list[str]) -> dict[str, int]:
    return score(results[0], doc["answers"])
