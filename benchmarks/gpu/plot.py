"""A picture of a GPU comparison run: output throughput and TTFT p50 per server and concurrency.

python benchmarks/gpu/plot.py benchmarks/results/gpu-h200x2-run2/results.json docs/gpu-comparison.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(results_path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = json.loads(results_path.read_text())["runs"]
    servers = list(dict.fromkeys(r["server"] for r in runs))
    levels = sorted({r["concurrency"] for r in runs})
    labels = {"plain": "plain vLLM", "stack": "stack via proxy", "stack-direct": "stack, direct ingress"}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.8 / len(servers)
    for panel, (key, title) in enumerate((("output_throughput", "output tok/s"), ("median_ttft_ms", "TTFT p50 (ms)"))):
        ax = axes[panel]
        for i, server in enumerate(servers):
            values = []
            for c in levels:
                rows = [r[key] for r in runs if r["server"] == server and r["concurrency"] == c]
                values.append(sum(rows) / len(rows))
            positions = [x + i * width for x in range(len(levels))]
            bars = ax.bar(positions, values, width, label=labels.get(server, server))
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
        ax.set_xticks([x + width * (len(servers) - 1) / 2 for x in range(len(levels))])
        ax.set_xticklabels([f"concurrency {c}" for c in levels])
        ax.set_yscale("log")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.suptitle("8B-shaped model (dummy weights), bf16, 512 in / 128 out, one H200", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
