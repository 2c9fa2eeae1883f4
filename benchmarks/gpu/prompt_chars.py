"""Characters per token of the ladder's prompts, which the router's admission estimate counts at 4
characters per token. vLLM's ``random`` dataset takes consecutive token ids from a random offset in
the vocabulary, decodes them, re-encodes the text and cuts it to the prompt length; this does the
same. Run here (no GPU), after goodput.py's model folder exists:

    python benchmarks/gpu/prompt_chars.py /tmp/llama8b-dummy --out benchmarks/results/goodput-h200-r4/prompt-chars.json
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from transformers import AutoTokenizer

CHARS_PER_TOKEN = 4  # serve_app.core.request_facts: the router's estimate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    rng = random.Random(0)
    chars = []
    for _ in range(args.samples):
        offset = rng.randrange(tokenizer.vocab_size)
        ids = [(offset + i) % tokenizer.vocab_size for i in range(args.tokens)]
        again = tokenizer.encode(tokenizer.decode(ids), add_special_tokens=False)[: args.tokens]
        chars.append(len(tokenizer.decode(again)))
    mean = sum(chars) / len(chars)
    estimate = mean // CHARS_PER_TOKEN + 1 + args.output_tokens
    result = {
        "prompt_tokens": args.tokens,
        "characters": {"min": min(chars), "mean": round(mean, 1), "max": max(chars)},
        "characters_per_token": round(mean / args.tokens, 3),
        "router_cost_estimate_tokens": int(estimate),
        "planned_cost_tokens": args.tokens + args.output_tokens,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(result)


if __name__ == "__main__":
    main()
