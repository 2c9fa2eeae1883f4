"""The OpenAI API through the stack on a GPU machine (vLLM 0.26 there): SmolLM2 with real weights.

    python benchmarks/gpu/api_smoke.py --out $OUT [--base-url http://127.0.0.1:8000]

One request of each kind the CPU conformance suite compares with plain vLLM (tests/conformance/),
here only against expectations: the golden answer, a stream, a tool call, echo with logprobs, a
token-id prompt, tokenize, an unknown model and a capped ``n``. Writes ``api_smoke.json``.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

MODEL = "smollm2-135m-instruct"
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0}
CASES: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("golden chat", "/v1/chat/completions", CHAT | {"max_tokens": 16}, 200, "Paris"),
    ("stream", "/v1/chat/completions", CHAT | {"max_tokens": 8, "stream": True}, 200, "[DONE]"),
    ("tools required", "/v1/chat/completions", CHAT | {"tools": [TOOL], "tool_choice": "required"}, 200, "get_weather"),
    (
        "echo logprobs",
        "/v1/completions",
        {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 0, "echo": True, "logprobs": 1},
        200,
        "token_logprobs",
    ),
    ("token ids", "/v1/completions", {"model": MODEL, "prompt": [504, 3575, 282], "max_tokens": 4}, 200, "text"),
    ("tokenize", "/tokenize", {"model": MODEL, "prompt": "hello world"}, 200, "tokens"),
    ("unknown model", "/v1/completions", {"model": "nope", "prompt": "x"}, 404, "error"),
    ("n capped", "/v1/completions", {"model": MODEL, "prompt": "x", "n": 1000}, 400, "error"),
]


def post(url: str, payload: dict[str, Any]) -> tuple[int, str]:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    args = parser.parse_args()
    rows = []
    for name, path, payload, want_status, want_text in CASES:
        started = time.monotonic()
        status, body = post(args.base_url + path, payload)
        ok = status == want_status and want_text in body
        rows.append({"case": name, "status": status, "ok": ok, "seconds": round(time.monotonic() - started, 3)})
        rows[-1]["body"] = body[:600]
        print(("PASS" if ok else "FAIL"), name, status, body[:200].replace("\n", " "), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "api_smoke.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
