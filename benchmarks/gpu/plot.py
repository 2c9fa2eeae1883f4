"""A picture of a GPU comparison run: output throughput and TTFT p50 per server and concurrency.

    python benchmarks/gpu/plot.py docs/gpu-comparison.png benchmarks/results/gpu-h200-run5/bf16/results.json \
        benchmarks/results/gpu-h200-run5/awq/results.json

With several results files (the halves of one run), each file's servers get its folder's name (the half) as a
suffix. Measurements in which not every request completed are left out (their README says why).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

LABELS = {
    "plain": "plain vLLM",
    "stack": "stack via proxy",
    "stack-direct": "stack, direct ingress",
    "stack-batched": "stack via proxy, router batching",
    "stack-direct-batched": "stack, direct ingress, router batching",
    "stack-direct-old-defaults": "stack as before run 5 (engine on vLLM's generic batch defaults)",
    "plain-awq": "plain vLLM",
    "stack-direct-awq": "stack, direct ingress, router batching",
}


def load_runs(paths: list[Path]) -> list[dict]:
    runs = []
    for path in paths:
        for run in json.loads(path.read_text())["runs"]:
            if run.get("failed", 0) or not run.get("completed", 1):
                continue
            label = LABELS.get(run["server"], run["server"])
            runs.append(run | {"server": f"{label} ({path.parent.name})" if len(paths) > 1 else label})
    return runs


def main(out: Path, results_paths: list[Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load_runs(results_paths)
    servers = list(dict.fromkeys(r["server"] for r in runs))
    levels = sorted({r["concurrency"] for r in runs})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    width = 0.8 / len(servers)
    for panel, (key, title) in enumerate((("output_throughput", "output tok/s"), ("median_ttft_ms", "TTFT p50 (ms)"))):
        ax = axes[panel]
        for i, server in enumerate(servers):
            values = []
            for c in levels:
                rows = [r[key] for r in runs if r["server"] == server and r["concurrency"] == c]
                values.append(sum(rows) / len(rows) if rows else 0.0)
            positions = [x + i * width for x in range(len(levels))]
            bars = ax.bar(positions, values, width, label=server)
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
        ax.set_xticks([x + width * (len(servers) - 1) / 2 for x in range(len(levels))])
        ax.set_xticklabels([f"concurrency {c}" for c in levels])
        ax.set_yscale("log")
        ax.set_title(title)
    axes[0].legend(fontsize=6)
    title = "8B-shaped model (dummy weights), 512 in / 128 out, one H200 (in brackets: the half of the run)"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1]), [Path(a) for a in sys.argv[2:]])
