"""goodput.json, a table and a plot from the ladder files of ``goodput.py`` (runs here, no GPU).

    python benchmarks/gpu/goodput_report.py benchmarks/results/goodput-h200

Per output-length mode, offered rate and server: the means over rounds of goodput (requests/s that
met the SLO), request and output-token throughput, TTFT and TPOT percentiles, and the rejected,
timed-out and failed requests summed over rounds. ``best_goodput_ratio``: the stack's best goodput
over the ladder over plain vLLM's, per length mode; the headline is the lower of the two. Where the
ladder kept its requests (``goodput_ladder.halves``), also the goodput of the requests sent in the
second half of each rate's window, the share of each half's requests that met the SLO, and
``second_half_goodput_ratio`` from the former: an overloaded server's queue grows through a window.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

FIGURES = {
    "goodput_rps": "request_goodput",
    "throughput_rps": "request_throughput",
    "output_tokens_per_s": "output_throughput",
    "ttft_p50_ms": "p50_ttft_ms",
    "ttft_p99_ms": "p99_ttft_ms",
    "tpot_p50_ms": "p50_tpot_ms",
    "tpot_p99_ms": "p99_tpot_ms",
}
COUNTS = ("completed", "rejected", "timed_out", "failed")


def load(folder: Path) -> list[dict]:
    runs = []
    for path in sorted(folder.glob("ladder-round*-*.json")):
        runs += json.loads(path.read_text())["runs"]
    return runs


def cell(runs: list[dict]) -> dict:
    out = {name: round(sum(r.get(key) or 0.0 for r in runs) / len(runs), 3) for name, key in FIGURES.items()}
    out["goodput_per_round"] = [round(r.get("request_goodput") or 0.0, 3) for r in runs]
    out["rounds"] = len(runs)
    out["offered"] = sum(r["completed"] + sum(r["errors"].values()) for r in runs)
    out |= {"completed": sum(r["completed"] for r in runs)}
    out |= {kind: sum(r["errors"][kind] for r in runs) for kind in COUNTS[1:]}
    if all("halves" in r for r in runs):  # ladders that kept their requests (goodput_ladder.halves)
        out["second_half_goodput_rps"] = round(sum(r["halves"]["second_half_goodput_rps"] for r in runs) / len(runs), 3)
        for half in ("first_half", "second_half"):
            sent, good = (sum(r["halves"][half][key] for r in runs) for key in ("sent", "good"))
            out[f"{half}_met_slo"] = round(good / sent, 3) if sent else None
    return out


def _best_ratio(rows: list[dict], figure: str) -> tuple[dict, float | None]:
    best = {s: max((r[figure] for r in rows if r["server"] == s), default=0.0) for s in ("plain", "stack")}
    return best, (round(best["stack"] / best["plain"], 3) if best["plain"] else None)


def summarize(runs: list[dict]) -> dict:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        groups[(r["lengths"], r["rate"], r["server"])].append(r)
    doc: dict = {"by_lengths": {}}
    for lengths in sorted({k[0] for k in groups}):
        rows = [
            {"rate": rate, "server": server} | cell(groups[(lengths, rate, server)])
            for (mode, rate, server) in sorted(groups)
            if mode == lengths
        ]
        best, ratio = _best_ratio(rows, "goodput_rps")
        doc["by_lengths"][lengths] = {"rows": rows, "best_goodput_rps": best, "best_goodput_ratio": ratio}
        if all("second_half_goodput_rps" in r for r in rows):
            best, ratio = _best_ratio(rows, "second_half_goodput_rps")
            doc["by_lengths"][lengths] |= {"best_second_half_goodput_rps": best, "second_half_goodput_ratio": ratio}
    ratios = [m["best_goodput_ratio"] for m in doc["by_lengths"].values() if m["best_goodput_ratio"] is not None]
    doc["best_goodput_ratio"] = min(ratios) if ratios else None
    return doc


def table(doc: dict) -> str:
    halves = all("second_half_goodput_rps" in r for mode in doc["by_lengths"].values() for r in mode["rows"])
    head = "| lengths | offered req/s | server | goodput req/s | throughput req/s | output tok/s | TTFT p50 / p99 ms"
    head += " | TPOT p50 / p99 ms | completed | rejected | timed out | failed |"
    head += " second half: goodput req/s | met SLO, first / second half |" if halves else ""
    lines = [head, "|" + "---|" * (14 if halves else 12)]
    for lengths, mode in doc["by_lengths"].items():
        for r in mode["rows"]:
            line = (
                f"| {lengths} | {r['rate']} | {r['server']} | {r['goodput_rps']:.2f} | {r['throughput_rps']:.2f}"
                f" | {r['output_tokens_per_s']:,.0f} | {r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f}"
                f" | {r['tpot_p50_ms']:.1f} / {r['tpot_p99_ms']:.1f} | {r['completed']} | {r['rejected']}"
                f" | {r['timed_out']} | {r['failed']} |"
            )
            if halves:
                shares = f"{_share(r['first_half_met_slo'])} / {_share(r['second_half_met_slo'])}"
                line += f" {r['second_half_goodput_rps']:.2f} | {shares} |"
            lines.append(line)
    return "\n".join(lines) + "\n"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(doc["by_lengths"])
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4), squeeze=False)
    labels = {"plain": "plain vLLM (bf16 defaults)", "stack": "stack (planner's config)"}
    for ax, lengths in zip(axes[0], modes, strict=True):
        rows = doc["by_lengths"][lengths]["rows"]
        for server, label in labels.items():
            mine = [r for r in rows if r["server"] == server]
            ax.plot([r["rate"] for r in mine], [r["goodput_rps"] for r in mine], marker="o", label=label)
        ax.set(title=f"output lengths: {lengths}", xlabel="offered load (requests/s, Poisson)")
        ax.set(ylabel="goodput (requests/s within SLO)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(folder: Path) -> None:
    doc = summarize(load(folder))
    first = next(iter(sorted(folder.glob("ladder-round*-*.json"))), None)
    doc["slo_ms"] = json.loads(first.read_text())["slo_ms"] if first else None
    meta = folder / "meta.json"
    doc["meta"] = json.loads(meta.read_text()) if meta.exists() else {}
    (folder / "goodput.json").write_text(json.dumps(doc, indent=1))
    (folder / "summary.md").write_text(table(doc))
    plot(doc, folder / "goodput.png")
    print(table(doc))
    per_mode = {k: v["best_goodput_ratio"] for k, v in doc["by_lengths"].items()}
    print("best_goodput_ratio:", doc["best_goodput_ratio"], per_mode)
    by_lengths = doc["by_lengths"].items()
    halves = {k: v["second_half_goodput_ratio"] for k, v in by_lengths if "second_half_goodput_ratio" in v}
    if halves:
        print("second_half_goodput_ratio:", halves)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
