"""Measure one model with offline vLLM; run as a child process per model so its memory is freed.

    python -m serve_app.quantize.eval_worker --model DIR --out RESULT.json [--dtype bfloat16]

Writes raw measurements (no verdicts): prompt-logprob sums over the held-out text, the greedy
replies to the golden questions, and generation throughput. :mod:`serve_app.quantize.evaluate`
turns two of these into a report. vLLM is started only under ``__main__``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from serve_app.quantize.calibration import answer_matches, load_golden
from serve_app.quantize.evaluate import ModelMeasurement
from serve_app.quantize.onload import vllm_quantization_name
from serve_app.quantize.report import checkpoint_bytes
from serve_app.quantize.runner import EngineMemory

ANSWER_MAX_TOKENS = 48


def held_out_logprobs(llm: Any, text: str, window: int) -> tuple[float, int, float]:
    """Sum of log p(token | preceding tokens in its window) over the text cut into windows.

    Returns (logprob sum, scored tokens, seconds). ``prompt_logprobs=0`` makes vLLM return the
    logprob of each actual prompt token; a window's first token has no context and is not scored.
    """
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    ids = llm.get_tokenizer().encode(text, add_special_tokens=False)
    windows = [ids[i : i + window] for i in range(0, len(ids), window)]
    windows = [w for w in windows if len(w) > 1]
    started = time.perf_counter()
    outputs = llm.generate(
        [TokensPrompt(prompt_token_ids=w) for w in windows],
        SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0),
        use_tqdm=True,
    )
    elapsed = time.perf_counter() - started
    total, count = 0.0, 0
    for window_ids, out in zip(windows, outputs, strict=True):
        for position, entry in enumerate(out.prompt_logprobs or []):
            if entry is None:
                continue
            total += entry[window_ids[position]].logprob
            count += 1
    return total, count, elapsed


def golden_replies(llm: Any, questions: list[str]) -> list[str]:
    from vllm import SamplingParams

    conversations = [[{"role": "user", "content": q}] for q in questions]
    outputs = llm.chat(conversations, SamplingParams(temperature=0.0, max_tokens=ANSWER_MAX_TOKENS), use_tqdm=True)
    return [o.outputs[0].text for o in outputs]


def decode_throughput(llm: Any, prompts: list[str], max_tokens: int) -> tuple[int, float]:
    """Generated tokens and seconds for one batch that always runs ``max_tokens`` steps."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    started = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - started
    return sum(len(o.outputs[0].token_ids) for o in outputs), elapsed


def measure(args: argparse.Namespace) -> ModelMeasurement:
    from vllm import LLM

    started = time.perf_counter()
    options: dict[str, Any] = {"quantization": vllm_quantization_name(args.quantization)} if args.quantization else {}
    if args.kv_cache_dtype != "auto":
        options["kv_cache_dtype"] = args.kv_cache_dtype
    options |= EngineMemory(args.gpu_memory_utilization, args.kv_cache_memory_bytes).options()
    llm = LLM(
        model=args.model, dtype=args.dtype, enforce_eager=True, max_model_len=args.max_model_len, seed=0, **options
    )
    load_s = time.perf_counter() - started
    text = Path(args.heldout).read_text(encoding="utf-8")
    logprob_sum, scored, prefill_s = held_out_logprobs(llm, text, args.max_model_len - 1)
    golden = load_golden(Path(args.golden))
    replies = golden_replies(llm, [g.question for g in golden])
    generated, decode_s = decode_throughput(llm, [g.question for g in golden][: args.batch], args.decode_tokens)
    return ModelMeasurement(
        model=args.model,
        dtype=args.dtype,
        quantization=args.quantization,
        checkpoint_bytes=checkpoint_bytes(Path(args.model)),
        load_s=round(load_s, 2),
        heldout_tokens=scored,
        heldout_logprob_sum=logprob_sum,
        perplexity=math.exp(-logprob_sum / scored),
        prefill_tokens_per_s=scored / prefill_s,
        golden=[
            {"question": g.question, "answer": g.answer, "reply": r, "correct": answer_matches(r, g.answer)}
            for g, r in zip(golden, replies, strict=True)
        ],
        decode_tokens=generated,
        decode_tokens_per_s=generated / decode_s,
        kv_cache_dtype=args.kv_cache_dtype,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serve_app.quantize.eval_worker")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--quantization", default=None, help="quantize-on-load method (serve_app names)")
    p.add_argument("--kv-cache-dtype", default="auto", help="vLLM's kv_cache_dtype, e.g. fp8")
    p.add_argument("--gpu-memory-utilization", type=float, default=None, help="vLLM's; default: vLLM's")
    p.add_argument("--kv-cache-memory-bytes", type=int, default=None, help="vLLM's; default: sized by vLLM")
    p.add_argument("--heldout", required=True)
    p.add_argument("--golden", required=True)
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--batch", type=int, default=8, help="sequences in the throughput batch")
    p.add_argument("--decode-tokens", type=int, default=64)
    args = p.parse_args(argv)
    result = measure(args)
    Path(args.out).write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
