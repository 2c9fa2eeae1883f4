"""Size, quality and serving throughput of several variants of one model, back to back in one run.

Per variant, one after the other so that only one heavy job uses the CPU at a time:

1. quality as ``serve-app evaluate`` measures it (one offline vLLM child process,
   serve_app.quantize.eval_worker): weights size, held-out perplexity, golden answers;
2. serving throughput: vLLM's OpenAI server on the variant, driven by ``serve-app bench`` (which
   runs vLLM's own benchmark) at each ``--levels`` entry CLIENTSxREQUESTS (default 1 client x 8
   requests and 32 clients x 32 requests), streamed chat requests of the shipped bench prompts,
   greedy, exactly ``--max-tokens`` output tokens each (ignore_eos); output tokens/s per level.

    python benchmarks/quantization/compare.py --out benchmarks/results/quantization \\
        fp32=embedded:float32 bf16=embedded:bfloat16 int8-weight-only=embedded:bfloat16:int8-weight-only \\
        awq-w4g64=/tmp/q/smollm2-awq-w4g64:bfloat16

A variant is ``LABEL=MODEL:DTYPE[:QUANTIZATION]``; ``embedded`` is SmolLM2-135M-Instruct. The
first variant is the baseline for the deltas. Writes ``compare.json`` and ``compare.md``; server
logs go to ``--log-dir``. Starts vLLM, so only under ``__main__``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from throughput import Level, measure_serving, parse_levels

from serve_app.models.embedded import resolve_source
from serve_app.quantize.calibration import DEFAULT_GOLDEN, DEFAULT_HELDOUT, shipped
from serve_app.quantize.evaluate import ModelMeasurement, pct_change
from serve_app.quantize.runner import measure_model


@dataclass(frozen=True)
class Variant:
    label: str
    model: str
    dtype: str
    quantization: str | None


def parse_variant(spec: str) -> Variant:
    label, _, rest = spec.partition("=")
    parts = rest.split(":")
    if not label or len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"expected LABEL=MODEL:DTYPE[:QUANTIZATION], got {spec!r}")
    model = "embedded:smollm2-135m-instruct" if parts[0] == "embedded" else parts[0]
    return Variant(label, model, parts[1], parts[2] if len(parts) == 3 else None)


@dataclass(frozen=True)
class Row:
    variant: Variant
    quality: ModelMeasurement
    serving: dict[str, Any]  # throughput.measure_serving's result

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.variant.label, **self.quality.to_dict(), "serving": self.serving}


def table(rows: list[Row], levels: list[Level]) -> str:
    base = rows[0].quality
    tps = [f"out tok/s @{lv.clients} client{'s' if lv.clients > 1 else ''}" for lv in levels]
    lines = [
        "| variant | dtype | on-load quant. | weights file (MB) | perplexity | Δ ppl | golden | "
        + " | ".join(tps)
        + " |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |" + " ---: |" * len(levels),
    ]
    for row in rows:
        m, by_level = row.quality, row.serving["levels"]
        golden = f"{len(m.correct_questions)}/{len(m.golden)}"
        speeds = [_throughput_cell(by_level.get(str(lv.clients))) for lv in levels]
        lines.append(
            f"| {row.variant.label} | {m.dtype} | {row.variant.quantization or '-'} | {m.checkpoint_bytes / 1e6:.1f} | "
            f"{m.perplexity:.3f} | {pct_change(m.perplexity, base.perplexity):+.2f}% | {golden} | "
            + " | ".join(speeds)
            + " |"
        )
    return "\n".join(lines) + "\n"


def _throughput_cell(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "n/a"
    failed = f" ({summary['failed']} failed)" if summary["failed"] else ""
    return f"{summary['output_throughput']:.1f}{failed}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants", nargs="+", type=parse_variant)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--levels", type=parse_levels, default=parse_levels("1x8,32x32"), help="CLIENTSxREQUESTS,...")
    p.add_argument("--max-tokens", type=int, default=64, help="output tokens of every throughput request")
    p.add_argument("--log-dir", type=Path, default=Path("/tmp/serve-app-compare-logs"), help="vLLM server logs")
    args = p.parse_args()
    args.log_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for v in args.variants:
        path = resolve_source(v.model)
        m = measure_model(
            path, v.dtype, shipped(DEFAULT_HELDOUT), shipped(DEFAULT_GOLDEN), args.max_model_len, v.quantization
        )
        serving = measure_serving(
            v.label, path, v.dtype, v.quantization, args.levels, args.max_tokens, args.max_model_len, args.log_dir
        )
        rows.append(Row(v, m, serving))
        print(table(rows, args.levels), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.json").write_text(json.dumps([r.to_dict() for r in rows], indent=2) + "\n", encoding="utf-8")
    (args.out / "compare.md").write_text(table(rows, args.levels), encoding="utf-8")


if __name__ == "__main__":
    main()
