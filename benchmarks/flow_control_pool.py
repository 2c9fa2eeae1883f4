"""Pools the noisy-neighbour rounds of one setting: B's TTFT samples of every round together, per
phase, so B's p99 rests on more than one phase's 30-odd samples (whose p99 is their maximum).

    python -m benchmarks.flow_control_pool --out pooled.json run-r1.json run-r2.json

Reads the ``ttft_samples_s`` that ``benchmarks.flow_control`` keeps; rounds without them are refused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.flow_control import quantile
from serve_app.bench.provenance import module_command

PHASES = ("b_alone", "with_classes", "without_classes")


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for phase in PHASES:
        samples = sorted(t for run in runs for t in run[phase]["b"].get("ttft_samples_s", []))
        sent = sum(run[phase]["b"]["sent"] for run in runs)
        out[phase] = {"b_sent": sent, "b_answered": len(samples)}
        if samples:
            out[phase] |= {"ttft_p50_s": quantile(samples, 0.5), "ttft_p99_s": quantile(samples, 0.99)}
    alone = out["b_alone"]["ttft_p99_s"]
    for phase in PHASES[1:]:
        if "ttft_p99_s" in out[phase]:
            out[phase]["p99_over_alone"] = out[phase]["ttft_p99_s"] / alone
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs = [json.loads(path.read_text()) for path in args.runs]
    missing = [str(p) for p, run in zip(args.runs, runs, strict=True) if "ttft_samples_s" not in run["b_alone"]["b"]]
    if missing:
        parser.error(f"no TTFT samples in {missing}: run them with the current benchmarks.flow_control")
    result = {"command": module_command("benchmarks.flow_control_pool"), "runs": [str(p) for p in args.runs]}
    result |= pooled(runs)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
