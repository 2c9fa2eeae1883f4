"""serve-app evaluate: perplexity, golden answers and throughput of a model against a baseline."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from serve_app.models.embedded import SMOLLM2_SOURCE
from serve_app.quantize.calibration import DEFAULT_GOLDEN, DEFAULT_HELDOUT, shipped

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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from serve_app.models.embedded import resolve_source
    from serve_app.quantize import runner
    from serve_app.quantize.evaluate import Thresholds, compare
    from serve_app.quantize.report import EVAL_REPORT, checkpoint_fingerprint, write_json

    try:
        thresholds = Thresholds(args.max_ppl_increase_pct, args.min_golden_kept)
    except ValueError as err:
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
        base = runner.measure_model(baseline, args.baseline_dtype or args.dtype, heldout, golden, args.max_model_len)
        cand = runner.measure_model(
            model, args.dtype, heldout, golden, args.max_model_len, args.quantization, args.kv_cache_dtype
        )
    except runner.RunnerError as err:
        print(f"serve-app evaluate: error: {err}", file=sys.stderr)
        return 2
    report = compare(cand, base, thresholds)
    report["checkpoint_fingerprint"] = checkpoint_fingerprint(model)
    report["data"] = {"heldout": str(heldout), "golden": str(golden), "max_model_len": args.max_model_len}
    write_json(report_path, report)
    print(json.dumps({k: report[k] for k in ("passed", "failures", "model", "baseline", "deltas")}, indent=2))
    print(f"wrote {report_path}", file=sys.stderr)
    return 0 if report["passed"] else 1
