"""Tables from ``saturation.py``'s files: the clean points, the ratios between engines measured in
the same round, and the profiled kernel split. Markdown on stdout, for the results README.

    python benchmarks/gpu/saturation_report.py benchmarks/results/goodput-saturation/h100-run*
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RATIOS = (("w8a8", "bf16"), ("w8a8-fp8kv", "w8a8"), ("w8a8-fp8kv", "bf16"))
SPLIT = ("gemm", "attention", "quantize activations", "fused elementwise (inductor)")


def rounds(folders: list[Path]) -> list[tuple[str, dict]]:
    return [(f"{folder.name} r{data['round']}", data) for folder in folders for data in _load(folder)]


def _load(folder: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(folder.glob("saturation-round*.json"))]


def _cores(point: dict) -> tuple[float, float]:
    """(API server, engine core) cores: the tree's first process is the server, the busiest other the core."""
    used = list(point.get("engine_cores", {}).values())
    return (used[0], max(used[1:])) if len(used) > 1 else (float("nan"), float("nan"))


def points_table(measured: list[tuple[str, dict]]) -> str:
    rows = [
        "| run, round | engine | c | output tok/s | TTFT p50 / p99 ms | TPOT p99 ms | GPU busy % (nvidia-smi) "
        "| cores: API server / engine core / client | preemptions |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for label, data in measured:
        for name, engine in data["engines"].items():
            if "points" not in engine:
                rows.append(f"| {label} | {name} | | failed: {engine.get('error', '?')[:80]} | | | | | |")
                continue
            for p in engine["points"]:
                api, core = _cores(p)
                rows.append(
                    f"| {label} | {name} | {p['concurrency']} | {p['output_tokens_per_s']:,.0f} | "
                    f"{p['ttft_p50_ms']:.0f} / {p['ttft_p99_ms']:.0f} | {p['tpot_p99_ms']:.1f} | "
                    f"{p.get('gpu_utilization_pct')} | {api:.2f} / {core:.2f} / {p.get('client_cores', 0):.2f} | "
                    f"{p.get('preemptions', 0):.0f} |"
                )
    return "\n".join(rows)


def ratio_table(measured: list[tuple[str, dict]]) -> str:
    rows = ["| run, round | ratio | c | output tok/s ratio |", "|---|---|---:|---:|"]
    for label, data in measured:
        engines = data["engines"]
        for top, bottom in RATIOS:
            if "points" not in engines.get(top, {}) or "points" not in engines.get(bottom, {}):
                continue
            for a, b in zip(engines[top]["points"], engines[bottom]["points"], strict=True):
                ratio = a["output_tokens_per_s"] / b["output_tokens_per_s"]
                rows.append(f"| {label} | {top} / {bottom} | {a['concurrency']} | {ratio:.3f} |")
    return "\n".join(rows)


def split_table(measured: list[tuple[str, dict]]) -> str:
    head = " | ".join(f"{name} ms (share)" for name in SPLIT)
    rows = [
        f"| run, round | engine | running | window ms | kernel ms | busy | {head} |",
        "|---|---|---:|---:|---:|---:|" + "---:|" * len(SPLIT),
    ]
    for label, data in measured:
        for name, engine in data["engines"].items():
            kernels = engine.get("kernels", {})
            if not kernels.get("kernels"):
                continue
            running = (engine.get("profiled_run") or engine["points"][-1]).get("running_at_end")
            shares = kernels["category_share"]
            cells = " | ".join(f"{kernels['kernel_ms'] * shares.get(c, 0):.0f} ({shares.get(c, 0):.0%})" for c in SPLIT)
            rows.append(
                f"| {label} | {name} | {running:.0f} | {kernels['window_ms']:.0f} | {kernels['kernel_ms']:.0f} | "
                f"{kernels['busy_share']:.0%} | {cells} |"
            )
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    measured = rounds([Path(arg) for arg in argv])
    for title, table in (("Clean points", points_table), ("Ratios", ratio_table), ("Kernel split", split_table)):
        print(f"### {title}\n\n{table(measured)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
