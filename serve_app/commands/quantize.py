"""serve-app quantize: produce a compressed-tensors checkpoint with llm-compressor (its own venv)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from serve_app.quantize.calibration import DEFAULT_CALIBRATION, shipped


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("quantize", help="quantize a checkpoint (AWQ, GPTQ, W8A8-int8, FP8-dynamic) for vLLM")
    p.add_argument("--model", default="embedded", help="checkpoint folder, or 'embedded' for SmolLM2-135M-Instruct")
    p.add_argument("--method", required=True, choices=["awq", "gptq", "w8a8-int8", "fp8-dynamic"])
    p.add_argument("--calibration", type=Path, default=None, help="chat JSONL (default: the shipped chat set)")
    p.add_argument("--samples", type=int, default=128, help="calibration samples")
    p.add_argument("--seq-len", type=int, default=512, help="calibration tokens per sample (truncated)")
    p.add_argument(
        "--group-size", type=int, default=None, help="int4 group size; -1 = per channel (default: 128 if it fits)"
    )
    p.add_argument("--out", type=Path, required=True, help="output checkpoint folder (replaced when done)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quant-python", type=Path, default=None, help="interpreter of the quantization venv")
    p.add_argument("--cache-dir", type=Path, default=None, help="model cache folder for the embedded model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from serve_app.models.embedded import prepare_smollm2
    from serve_app.quantize import runner
    from serve_app.quantize.methods import QuantizeSetupError

    calibration = args.calibration or shipped(DEFAULT_CALIBRATION)
    try:
        python = runner.quant_python(args.quant_python)
        model = prepare_smollm2(args.cache_dir) if args.model == "embedded" else Path(args.model).expanduser()
        _, group_size = runner.precheck(model, args.method, args.group_size, calibration, args.samples, args.seq_len)
    except (QuantizeSetupError, runner.RunnerError) as err:
        print(f"serve-app quantize: error: {err}", file=sys.stderr)
        return 2
    pipeline_args = [
        "--model", str(model), "--method", args.method, "--calibration", str(calibration),
        "--samples", str(args.samples), "--seq-len", str(args.seq_len), "--group-size", str(group_size),
        "--out", str(args.out), "--threads", str(args.threads),
    ]  # fmt: skip
    user_command = ["serve-app", "quantize", "--model", args.model, *pipeline_args[2:]]
    return runner.run_pipeline(python, pipeline_args, user_command)
