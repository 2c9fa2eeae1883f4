"""The rules: what makes the target's answer equal to plain vLLM's.

- Statuses are equal, or plain vLLM failed (5xx, no answer in time, or a body that is not an OpenAI
  error) and the target answered a 4xx; where a case names the stack's own stricter status, the
  stack must answer exactly that.
- A successful answer is equal to vLLM's field by field: the same keys, the same strings (greedy
  texts), floats within the case's tolerance (``Case.tol``), only ``IGNORED_KEYS`` left out;
  tool-call ``arguments`` compare as parsed JSON; streams compare folded (``fold_stream``), and on
  the long-answer cases (``Case.streams_in_pieces``) the target must stream in pieces where vLLM does.
- Every error body of the target is OpenAI-shaped: ``{"error": {"message": str, "type": str,
  "param": str | None, "code": ...}}``. vLLM 0.32 puts the HTTP status in ``code``; the router's
  own errors (unknown model, its caps, JSON it cannot read, admission) put OpenAI's machine-readable
  reason there (``model_not_found``), or null: ``code`` is the status, a string, or null.
"""

from __future__ import annotations

import json
import math
from typing import Any

from tests.conformance.cases import Case
from tests.conformance.drivers import Outcome, Status

# Per request (ids, time) or per engine config (the fingerprint: its own test compares it once).
IGNORED_KEYS = frozenset({"id", "created", "system_fingerprint"})
ERROR_KEYS = {"message", "type", "param", "code"}


def vllm_failed(outcome: Outcome, case: Case) -> bool:
    status = outcome.status
    return not isinstance(status, int) or status >= 500 or case.vllm_detail_body


def is_client_error(status: Status) -> bool:
    return isinstance(status, int) and 400 <= status < 500


def status_problem(case: Case, ref: Outcome | None, tgt: Outcome, target_is_stack: bool) -> str | None:
    if target_is_stack and case.stack_status is not None:
        return None if tgt.status == case.stack_status else f"the stack must answer {case.stack_status}"
    assert ref is not None
    if ref.status == tgt.status or (vllm_failed(ref, case) and is_client_error(tgt.status)):
        return None
    return "statuses differ"


def error_shape_problem(outcome: Outcome) -> str | None:
    body = outcome.body
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(body["error"], dict):
        return f'not {{"error": {{...}}}}: {outcome.text[:300]}'
    error = body["error"]
    if set(error) != ERROR_KEYS:
        return f"error keys {sorted(error)} != {sorted(ERROR_KEYS)}"
    if not (isinstance(error["message"], str) and error["message"]):
        return "error.message is not a non-empty string"
    if not (isinstance(error["type"], str) and error["type"]):
        return "error.type is not a non-empty string"
    if error["param"] is not None and not isinstance(error["param"], str):
        return "error.param is neither a string nor null"
    code = error["code"]
    if not (code is None or isinstance(code, str) or code == outcome.status):
        return f"error.code {code!r} is neither the HTTP status {outcome.status}, a string nor null"
    return None


def _parsed(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _by_token(items: list[Any]) -> list[Any]:
    """Top logprobs in a stable order: equal logprobs (ties) may come in either order."""
    if all(isinstance(i, dict) and "token" in i for i in items):
        return sorted(items, key=lambda i: (i["token"], json.dumps(i, sort_keys=True, default=str)))
    return items


def _short(value: Any, limit: int = 400) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def diff(a: Any, b: Any, tol: float, path: str = "$") -> list[str]:
    """Where ``a`` and ``b`` differ: keys, lengths, strings, and floats by more than ``tol``."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys_a, keys_b = set(a) - IGNORED_KEYS, set(b) - IGNORED_KEYS
        if keys_a != keys_b:
            return [
                f"{path}: keys only in reference {sorted(keys_a - keys_b)}, only in target {sorted(keys_b - keys_a)}"
            ]
        out: list[str] = []
        for key in sorted(keys_a):
            va, vb = a[key], b[key]
            if key == "arguments" and isinstance(va, str) and isinstance(vb, str):
                va, vb = _parsed(va), _parsed(vb)
            if key == "top_logprobs" and isinstance(va, list) and isinstance(vb, list):
                va, vb = _by_token(va), _by_token(vb)
            out += diff(va, vb, tol, f"{path}.{key}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}: {_short(a)} != {_short(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in diff(x, y, tol, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float | int) and not isinstance(b, bool):
        close = math.isclose(a, b, rel_tol=0, abs_tol=tol) or (math.isinf(a) and a == b)
        return [] if close else [f"{path}: {a!r} != {b!r} (tolerance {tol:g})"]
    if isinstance(b, float) and isinstance(a, int) and not isinstance(a, bool):
        return diff(b, a, tol, path)
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def _merge(a: Any, b: Any) -> Any:
    """Fold a stream's deltas: strings and plain lists concatenate, lists of items with an ``index``
    (tool calls) merge by index, dicts merge key by key, anything else keeps the latest non-null."""
    if a is None or b is None:
        return b if a is None else a
    if isinstance(a, str) and isinstance(b, str):
        return a + b
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: _merge(a.get(k), b.get(k)) for k in {**a, **b}}
    if isinstance(a, list) and isinstance(b, list):
        if all(isinstance(i, dict) and "index" in i for i in [*a, *b]):
            by_index: dict[Any, Any] = {}
            for item in [*a, *b]:
                by_index[item["index"]] = _merge(by_index.get(item["index"]), item)
            return [by_index[k] for k in sorted(by_index)]
        return a + b
    return b


def fold_stream(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """What a stream says, independent of where it was cut into chunks: vLLM merges the deltas of
    tokens its HTTP side has not sent yet, so chunk boundaries depend on timing (two runs on one
    server differ), never the text, logprobs, tool calls, finish reasons or usage."""
    choices: dict[int, Any] = {}
    for chunk in chunks:
        for choice in chunk.get("choices") or []:
            choices[choice["index"]] = _merge(choices.get(choice["index"]), choice)
    return {
        "choices": [choices[i] for i in sorted(choices)],
        "usage": [c["usage"] for c in chunks if c.get("usage")],
        # The union, not each chunk's shape: a chunk that closes a choice carries more fields, and
        # whether every token of a choice lands in that one chunk is timing too.
        "chunk_fields": sorted({key for c in chunks for key in c}),
        "model": sorted({c.get("model") for c in chunks}),
        "object": sorted({c.get("object") for c in chunks}),
    }


def _pieces(chunks: list[dict[str, Any]]) -> int:
    """Chunks that carry generated text or tool-call deltas."""
    return sum(
        any(
            c.get("text") or (c.get("delta") or {}).get("content") or (c.get("delta") or {}).get("tool_calls")
            for c in chunk.get("choices") or []
        )
        for chunk in chunks
    )


def messages(case: Case, outcome: Outcome) -> list[dict[str, Any]]:
    """Each choice's message; for a stream, its folded delta."""
    if case.stream:
        return [c.get("delta") or {} for c in fold_stream(outcome.body)["choices"]]
    return [c.get("message") or {} for c in outcome.body.get("choices", [])]


def content_problems(case: Case, ref: Outcome, tgt: Outcome) -> list[str]:
    """The case's own checks on the reference (so a case that stopped testing its feature fails) and
    the same parsing on both sides."""
    problems = []
    if case.tool_call and not any(m.get("tool_calls") for m in messages(case, ref)):
        problems.append("the reference answered without a parsed tool call")
    if case.json_content:
        for name, outcome in (("reference", ref), ("target", tgt)):
            for message in messages(case, outcome):
                try:
                    json.loads(message.get("content") or "")
                except ValueError:
                    problems.append(f"{name}'s content is not JSON: {message.get('content')!r}")
    return problems


def answer_problems(case: Case, ref: Outcome, tgt: Outcome) -> list[str]:
    if not case.stream:
        return diff(ref.body, tgt.body, case.tol) + content_problems(case, ref, tgt)
    problems = diff(fold_stream(ref.body), fold_stream(tgt.body), case.tol) + content_problems(case, ref, tgt)
    if case.streams_in_pieces and _pieces(ref.body) >= 4 and _pieces(tgt.body) < 2:
        problems.append("the target sent the whole answer in one chunk: it must stream as it generates")
    return problems
