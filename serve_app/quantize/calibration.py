"""Calibration and evaluation data shipped in ``serve_app/data`` (pure, stdlib only)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from serve_app.errors import ServeAppError

DEFAULT_CALIBRATION = "calibration_chat.jsonl"
DEFAULT_HELDOUT = "heldout.txt"
DEFAULT_GOLDEN = "golden_qa.jsonl"

Messages = list[dict[str, str]]


class DataFileError(ServeAppError, ValueError):
    pass


@dataclass(frozen=True)
class GoldenItem:
    question: str
    answer: str  # the answer counts as kept when the reply contains it (case-insensitive)


def shipped(name: str) -> Path:
    # serve_app/data is package data, not a package (it has no __init__.py).
    return Path(str(resources.files("serve_app") / "data" / name))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFileError(f"{path}:{number}: not JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise DataFileError(f"{path}:{number}: expected a JSON object")
        rows.append(row)
    return rows


def load_calibration(path: Path) -> list[Messages]:
    """Chat samples: one ``{"messages": [{"role": ..., "content": ...}, ...]}`` per line, or
    ``{"text": ...}`` for plain text (wrapped as a single user turn)."""
    samples: list[Messages] = []
    for number, row in enumerate(_jsonl(path), start=1):
        if isinstance(row.get("text"), str):
            samples.append([{"role": "user", "content": row["text"]}])
            continue
        messages = row.get("messages")
        ok = isinstance(messages, list) and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        )
        if not ok or not isinstance(messages, list) or not messages:
            raise DataFileError(f"{path}: sample {number} needs 'messages' (role/content objects) or 'text'")
        samples.append([{"role": m["role"], "content": m["content"]} for m in messages])
    if not samples:
        raise DataFileError(f"{path}: no calibration samples")
    return samples


def load_golden(path: Path) -> list[GoldenItem]:
    items = []
    for number, row in enumerate(_jsonl(path), start=1):
        question, answer = row.get("question"), row.get("answer")
        if not (isinstance(question, str) and question and isinstance(answer, str) and answer):
            raise DataFileError(f"{path}: item {number} needs non-empty 'question' and 'answer' strings")
        items.append(GoldenItem(question, answer))
    return items


def answer_matches(reply: str, answer: str) -> bool:
    return answer.casefold() in reply.casefold()
