"""The case list itself: enough cases in every group the issue names, and unique readable ids."""

from __future__ import annotations

from collections import Counter

from tests.conformance.cases import all_cases


def test_cases_cover_the_issue() -> None:
    cases = all_cases()
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), [i for i, n in Counter(ids).items() if n > 1]
    assert len(cases) >= 60
    groups = Counter(c.id.split("_")[0] for c in cases)
    assert groups["bad"] >= 20
    for group in ("chat", "tools", "structured", "cmpl", "embed", "tokenize"):
        assert groups[group] >= 2, group
    assert any(c.stream for c in cases if c.api == "chat") and any(c.stream for c in cases if c.api == "completions")
    # raw: bodies that are not JSON, and GETs on paths the SDK has no call for
    assert sum(c.api == "raw" for c in cases) <= 8, "the SDK sends every case it can"
