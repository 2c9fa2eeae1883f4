"""serve-app evaluate: perplexity, golden answers and throughput of a model against a baseline, and
with --lm-eval the project's lm-eval tasks through vLLM's OpenAI server."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from serve_app.models.embedded import SMOLLM2_SOURCE
from serve_app.quantize.calibration import DEFAULT_GOLDEN, DEFAULT_HELDOUT, shipped
from serve_app.quantize.lm_eval_verdict import MAX_SCORE_DROP, Scores

if TYPE_CHECKING:
    from serve_app.quantize.runner import EngineMemory

EMBEDDED_BASELINE = SMOLLM2_SOURCE


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "evaluate", help="evaluate a (quantized) model against a baseline; writes evaluation_report.json"
    )
    p.add_argument("--model", required=True, help="checkpoint folder to evaluate (or embedded:NAME)")
    p.add_argument("--baseline", default=EMBEDDED_BASELINE, help="reference checkpoint (default: %(default)s)")
    # bfloat16 by default: vLLM's CPU int4 kernel has no float32 path, and comparing both models at
    # one dtype isolates the quantization error from bf16 rounding.
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"], help="model dtype")
    p.add_argument("--baseline-dtype", default=None, help="baseline dtype (default: --dtype)")
    p.add_argument("--quantization", default=None, help="quantize-on-load method for --model, e.g. int8-weight-only")
    p.add_argument(
        "--kv-cache-dtype",
        default="auto",
        choices=["auto", "fp8", "fp8_e4m3", "fp8_e5m2"],
        help="KV cache dtype of --model (the baseline keeps its model dtype); fp8 needs a GPU",
    )
    p.add_argument("--heldout", type=Path, default=None, help="held-out text for perplexity (default: shipped)")
    p.add_argument("--golden", type=Path, default=None, help="golden Q/A JSONL (default: shipped)")
    p.add_argument("--max-model-len", type=int, default=1024, help="context (perplexity window = this - 1)")
    p.add_argument("--max-ppl-increase-pct", type=float, default=10.0, help="fail above this perplexity rise")
    p.add_argument("--min-golden-kept", type=float, default=0.9, help="fail below this fraction of golden answers")
    p.add_argument("--report", type=Path, default=None, help="report path (default: MODEL/evaluation_report.json)")
    p.add_argument("--cache-dir", type=Path, default=None, help="model cache folder for embedded models")
    p.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=None,
        help="vLLM's share of GPU memory for each engine evaluation starts (default: vLLM's); lower on a shared GPU",
    )
    p.add_argument(
        "--kv-cache-memory-bytes",
        type=int,
        default=None,
        help="a fixed KV cache for each engine (default: vLLM sizes it), for engines starting together on one GPU",
    )
    _register_lm_eval(p)
    p.set_defaults(func=run)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {value}")
    return value


def _register_lm_eval(p: argparse.ArgumentParser) -> None:
    # Off by default: it serves each model once more and takes minutes on a CPU.
    p.add_argument(
        "--lm-eval",
        action="store_true",
        help="also score both models on the project's lm-eval tasks, each served by vLLM's OpenAI server",
    )
    p.add_argument(
        "--max-lm-eval-drop",
        type=float,
        default=MAX_SCORE_DROP,
        help="fail when an lm-eval score falls more than this below the baseline's (default: %(default)s)",
    )
    p.add_argument("--lm-eval-limit", type=_positive_int, default=None, help="items per lm-eval task (default: all)")
    p.add_argument(
        "--lm-eval-python",
        default=None,
        help="interpreter that imports lm_eval (default: $LM_EVAL_PYTHON, else the checkout's .venv-eval)",
    )


def run(args: argparse.Namespace) -> int:
    from serve_app.models.embedded import resolve_source
    from serve_app.quantize import runner
    from serve_app.quantize.evaluate import Thresholds, compare, with_lm_eval
    from serve_app.quantize.report import EVAL_REPORT, checkpoint_fingerprint, write_json

    try:
        thresholds = Thresholds(args.max_ppl_increase_pct, args.min_golden_kept)
        memory = runner.EngineMemory(args.gpu_memory_utilization, args.kv_cache_memory_bytes)
        lm_eval_python = _lm_eval_python(args) if args.lm_eval else None
    except (ValueError, runner.RunnerError) as err:
        print(f"serve-app evaluate: error: {err}", file=sys.stderr)
        return 2
    model = resolve_source(args.model, args.cache_dir)
    baseline = resolve_source(args.baseline, args.cache_dir)
    heldout, golden = args.heldout or shipped(DEFAULT_HELDOUT), args.golden or shipped(DEFAULT_GOLDEN)
    # The report belongs next to a checkpoint the gate will read; on-load quantization, an FP8 KV
    # cache and shared embedded folders have no such checkpoint, so they need an explicit --report.
    plain_checkpoint = not args.quantization and args.kv_cache_dtype == "auto"
    own_folder = model.is_dir() and plain_checkpoint and not args.model.startswith("embedded:")
    report_path = args.report or (model / EVAL_REPORT if own_folder else None)
    if report_path is None:
        print("serve-app evaluate: error: no checkpoint folder of its own to write to; pass --report", file=sys.stderr)
        return 2
    try:
        base = runner.measure_model(
            baseline, args.baseline_dtype or args.dtype, heldout, golden, args.max_model_len, memory=memory
        )
        cand = runner.measure_model(
            model, args.dtype, heldout, golden, args.max_model_len, args.quantization, args.kv_cache_dtype, memory
        )
        report = compare(cand, base, thresholds)
        if lm_eval_python is not None:
            # Last: it serves each model once more, and a checkpoint vLLM cannot load has failed above.
            scores = _lm_eval_scores(args, model, baseline, lm_eval_python, memory)
            report = with_lm_eval(report, *scores, args.max_lm_eval_drop)
    except runner.RunnerError as err:
        print(f"serve-app evaluate: error: {err}", file=sys.stderr)
        return 2
    report["checkpoint_fingerprint"] = checkpoint_fingerprint(model)
    report["data"] = {"heldout": str(heldout), "golden": str(golden), "max_model_len": args.max_model_len}
    if lm_eval_python is not None:
        report["data"]["lm_eval_limit"] = args.lm_eval_limit
    write_json(report_path, report)
    shown = ("passed", "failures", "model", "baseline", "deltas", "lm_eval")
    print(json.dumps({k: report[k] for k in shown if k in report}, indent=2))
    print(f"wrote {report_path}", file=sys.stderr)
    return 0 if report["passed"] else 1


def _lm_eval_python(args: argparse.Namespace) -> str:
    """The interpreter for lm-eval, checked before any model loads: a missing lm-eval would
    otherwise surface only after minutes of perplexity and golden answers."""
    from serve_app.quantize.lm_eval_runner import check_lm_eval
    from serve_app.quantize.lm_eval_task import lm_eval_python

    if args.max_lm_eval_drop < 0:
        raise ValueError(f"--max-lm-eval-drop must be >= 0, not {args.max_lm_eval_drop}")
    python: str = args.lm_eval_python or lm_eval_python()
    check_lm_eval(python)
    return python


def _lm_eval_scores(
    args: argparse.Namespace, model: Path, baseline: Path, python: str, memory: EngineMemory
) -> tuple[Scores, Scores]:
    """(model's, baseline's) lm-eval scores, each model served alone and with the settings its
    perplexity was measured with."""
    from serve_app.quantize.lm_eval_runner import ServedModel, score_model

    dtype, length = args.baseline_dtype or args.dtype, args.max_model_len
    base = ServedModel(baseline, "baseline", dtype, length, memory=memory)
    cand = ServedModel(model, "model", args.dtype, length, args.quantization, args.kv_cache_dtype, memory)
    with tempfile.TemporaryDirectory(prefix="serve-app-lm-eval-") as tmp:
        base_scores = score_model(base, Path(tmp), python, args.lm_eval_limit)
        return score_model(cand, Path(tmp), python, args.lm_eval_limit), base_scores
