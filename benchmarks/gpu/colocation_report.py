"""Pure parts of ``colocation.py`` and its tables: how two engines' benchmark figures combine into
one GPU's, unique seeds per run, and the comparison of one engine with two on the GPU.

    python benchmarks/gpu/colocation_report.py benchmarks/results/goodput-colocation/run1

prints a Markdown table per round file (``colocation-round*.json``) under the folders given.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

FIGURES = ("output_throughput", "request_throughput", "completed", "failed")


def seed(round_no: int, mode: str, concurrency: int, engine_index: int) -> int:
    """A seed no other run of the experiment uses: vLLM's random dataset draws the same prompts for
    the same seed, and plain vLLM's prefix cache would serve a repeated prompt's prefill for free."""
    return 100_000 * (round_no + 1) + 10_000 * ("single", "pair").index(mode) + 10 * concurrency + engine_index


def combine(per_engine: Sequence[Mapping]) -> dict:
    """One GPU's figures from its engines' benchmark results, run at the same time: throughputs and
    counts add up; a latency percentile is the worst engine's (a request's latency is its engine's,
    and the engines' percentiles cannot be merged exactly)."""
    combined: dict = {key: round(sum(m.get(key, 0) for m in per_engine), 2) for key in FIGURES}
    for key in ("p99_ttft_ms", "p99_tpot_ms", "median_ttft_ms", "mean_tpot_ms"):
        combined[key] = round(max(m[key] for m in per_engine), 2)
    return combined


def _by_concurrency(points: Sequence[Mapping], engine: str, mode: str) -> dict[int, Mapping]:
    return {p["concurrency"]: p for p in points if p["mode"] == mode and p["engines"][0] == engine}


def table(result: Mapping) -> list[str]:
    """One round: per concurrency, one W8A8 engine, two W8A8 engines sharing it, and bf16 alone."""
    points = result["points"]
    single = _by_concurrency(points, result["variant"], "single")
    pair = _by_concurrency(points, result["variant"], "pair")
    baseline = _by_concurrency(points, result["baseline"], "single")
    head = "| c | engines | output tok/s | x one engine | x bf16 | TTFT p99 ms | TPOT p99 ms | GPU busy % |"
    lines = [head, "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for c in sorted(set(single) | set(pair) | set(baseline)):
        one, base = single.get(c), baseline.get(c)
        for label, point in (("bf16, one", base), ("W8A8, one", one), ("W8A8, two", pair.get(c))):
            if point is None:
                continue
            if "error" in point:
                lines.append(f"| {c} | {label} | error: {point['error'][:80]} | | | | | |")
                continue
            figures = point["combined"]
            tok = figures["output_throughput"]
            vs_one = _ratio(tok, one)
            vs_base = _ratio(tok, base)
            ttft, tpot = figures["p99_ttft_ms"], figures["p99_tpot_ms"]
            busy = point.get("gpu_utilization_pct")
            lines.append(
                f"| {c} | {label} | {tok:,.0f} | {vs_one} | {vs_base} | {ttft:,.0f} | {tpot:.1f} | {_text(busy)} |"
            )
    return lines


def _ratio(value: float, other: Mapping | None) -> str:
    if other is None or "combined" not in other or not other["combined"]["output_throughput"]:
        return ""
    return f"{value / other['combined']['output_throughput']:.3f}"


def _text(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


def main(folders: list[str]) -> int:
    for folder in folders:
        for path in sorted(Path(folder).glob("colocation-round*.json")):
            result = json.loads(path.read_text())
            print(f"\n{path} (GPU: {result.get('gpu', '?')}, KV per engine {result['kv_cache_bytes'] / 1e9:.2f} GB)\n")
            print("\n".join(table(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
