"""The shipped calibration / evaluation data are well-formed and the loaders reject bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.quantize.calibration import (
    DEFAULT_CALIBRATION,
    DEFAULT_GOLDEN,
    DEFAULT_HELDOUT,
    DataFileError,
    answer_matches,
    load_calibration,
    load_golden,
    shipped,
)


def test_shipped_calibration_set() -> None:
    samples = load_calibration(shipped(DEFAULT_CALIBRATION))
    assert 128 <= len(samples) <= 256
    assert all(s[-1]["role"] in ("user", "assistant") for s in samples)


def test_shipped_golden_and_heldout() -> None:
    golden = load_golden(shipped(DEFAULT_GOLDEN))
    assert 10 <= len(golden) <= 20
    assert len({g.question for g in golden}) == len(golden)
    assert len(shipped(DEFAULT_HELDOUT).read_text(encoding="utf-8")) > 2000


def test_golden_questions_are_not_in_the_calibration_set() -> None:
    calibration = shipped(DEFAULT_CALIBRATION).read_text(encoding="utf-8")
    assert not [g.question for g in load_golden(shipped(DEFAULT_GOLDEN)) if g.question in calibration]


def test_plain_text_samples_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "c.jsonl"
    f.write_text('{"text": "hello"}\n\n{"messages": [{"role": "user", "content": "hi"}]}\n')
    assert load_calibration(f) == [[{"role": "user", "content": "hello"}], [{"role": "user", "content": "hi"}]]
    f.write_text('{"messages": [{"role": "user"}]}\n')
    with pytest.raises(DataFileError, match="sample 1"):
        load_calibration(f)
    f.write_text("not json\n")
    with pytest.raises(DataFileError, match=r"c\.jsonl:1"):
        load_calibration(f)
    f.write_text('{"question": "q", "answer": ""}\n')
    with pytest.raises(DataFileError, match="item 1"):
        load_golden(f)


def test_answers_match_case_insensitively_as_substrings() -> None:
    assert answer_matches("The capital of France is PARIS.", "Paris")
    assert not answer_matches("It is Lyon.", "Paris")
