"""Means over rounds of compare.py's summaries (each round's ``summary.md``, doors in any order).

    python benchmarks/gpu/means.py benchmarks/results/gpu-h200-run6/round0/summary.md \
        benchmarks/results/gpu-h200-run6/round1/summary.md > benchmarks/results/gpu-h200-run6/means.md
"""

from __future__ import annotations

import sys
from pathlib import Path


def read_summary(path: Path) -> dict[tuple[str, str, str], dict[str, float]]:
    """(concurrency, spread, metric) -> {door: value}, from compare.summarize's table."""
    lines = path.read_text().splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    doors = ["plain", *head[4::2]]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        values = [cells[3], *cells[4::2]]
        rows[(cells[0], cells[1], cells[2])] = {d: float(v) for d, v in zip(doors, values, strict=True) if v != "-"}
    return rows


def main() -> None:
    rounds = [read_summary(Path(p)) for p in sys.argv[1:]]
    doors = [d for d in rounds[0][next(iter(rounds[0]))] if d != "plain"]
    print("| c | spread | metric | plain vLLM | " + " | ".join(f"{d} | / plain" for d in doors) + " |")
    print("|---|---|---|---:|" + "---:|---:|" * len(doors))
    for key in rounds[0]:
        mean = {d: sum(r[key][d] for r in rounds) / len(rounds) for d in ("plain", *doors)}
        cells = " | ".join(f"{mean[d]:.2f} | {mean[d] / mean['plain']:.3f}" for d in doors)
        print(f"| {key[0]} | {key[1]} | {key[2]} | {mean['plain']:.2f} | {cells} |")


if __name__ == "__main__":
    main()
