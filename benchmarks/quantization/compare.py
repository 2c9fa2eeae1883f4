"""Quality/size table for several variants of one model, measured the same way as ``serve-app evaluate``.

Each variant runs in its own vLLM child process (serve_app.quantize.eval_worker), one after the
other, so only one heavy job uses the CPU at a time.

    python benchmarks/quantization/compare.py --out benchmarks/results/quantization \\
        fp32=embedded:float32 bf16=embedded:bfloat16 int8-weight-only=embedded:bfloat16:int8-weight-only \\
        awq-w4g64=/tmp/q/smollm2-awq-w4g64:float32

A variant is ``LABEL=MODEL:DTYPE[:QUANTIZATION]``; ``embedded`` is SmolLM2-135M-Instruct. The
first variant is the baseline for the deltas. Writes ``compare.json`` and ``compare.md``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

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


def table(rows: list[tuple[Variant, ModelMeasurement]]) -> str:
    base = rows[0][1]
    lines = [
        "| variant | dtype | on-load quant. | weights file (MB) | perplexity | Δ ppl | golden | decode tok/s |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for v, m in rows:
        golden = f"{len(m.correct_questions)}/{len(m.golden)}"
        lines.append(
            f"| {v.label} | {m.dtype} | {v.quantization or '-'} | {m.checkpoint_bytes / 1e6:.1f} | "
            f"{m.perplexity:.3f} | {pct_change(m.perplexity, base.perplexity):+.2f}% | {golden} | "
            f"{m.decode_tokens_per_s:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants", nargs="+", type=parse_variant)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--max-model-len", type=int, default=1024)
    args = p.parse_args()
    rows = []
    for v in args.variants:
        m = measure_model(
            resolve_source(v.model), v.dtype, shipped(DEFAULT_HELDOUT), shipped(DEFAULT_GOLDEN), args.max_model_len,
            v.quantization,
        )  # fmt: skip
        rows.append((v, m))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.json").write_text(
        json.dumps([{"label": v.label, **m.to_dict()} for v, m in rows], indent=2) + "\n", encoding="utf-8"
    )
    (args.out / "compare.md").write_text(table(rows), encoding="utf-8")
    print(table(rows))


if __name__ == "__main__":
    main()
