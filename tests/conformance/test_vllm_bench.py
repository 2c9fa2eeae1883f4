"""``serve-app bench`` against a real plain vLLM server on the embedded model: streaming chat and
completions run vLLM's own benchmark, and every figure of the command's report is the figure of
vLLM's saved result file for that level.

The server is the conformance suite's plain vLLM chat server (``sides.reference``: the benchmarks'
command plus the tool-parser flags and the seed, which change no figure checked here), started once
for the package instead of a server of this module's own. The file's name sorts it after the
comparisons, so its load reaches the reference only once they are done.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.seed_table import MODEL_ID
from serve_app import cli
from serve_app.bench.prompts import chat_prompts
from serve_app.models.embedded import resolve_source
from tests.conformance.conftest import Sides

pytestmark = pytest.mark.integration

METRICS = ("ttft", "tpot", "itl", "e2el")
# The chat set's order with this seed starts with three prompts of distinct, short reference
# answers (128, 64 and 96 tokens), so that the set is checked with little decoding.
CHAT_SEED = 40


@pytest.fixture(scope="module")
def plain(sides: Sides) -> tuple[str, Path]:
    """Plain vLLM's OpenAI server as the benchmarks run it; its URL and the model folder."""
    return sides.reference.chat_url, Path(resolve_source(f"embedded:{MODEL_ID}", None))


def bench(argv: list[str], out: Path) -> dict[str, Any]:
    assert cli.main(["bench", *argv, "--no-progress", "--out", str(out)]) == 0
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    return results


def assert_summary_is_vllms(summary: dict[str, Any], vllm: dict[str, Any]) -> None:
    pairs = {
        "completed": (summary["completed"], vllm["completed"]),
        "failed": (summary["failed"], vllm["failed"]),
        "duration": (summary["duration_s"], vllm["duration"]),
        "total_input_tokens": (summary["total_input_tokens"], vllm["total_input_tokens"]),
        "total_output_tokens": (summary["total_output_tokens"], vllm["total_output_tokens"]),
        "request_throughput": (summary["request_throughput"], vllm["request_throughput"]),
        "output_throughput": (summary["output_throughput"], vllm["output_throughput"]),
        "total_token_throughput": (summary["total_token_throughput"], vllm["total_token_throughput"]),
        "request_goodput": (summary["request_goodput"], vllm["request_goodput"]),
    }
    for metric in METRICS:
        for ours, theirs in (("mean_ms", "mean"), ("std_ms", "std"), ("p50_ms", "p50"), ("p95_ms", "p95")):
            pairs[f"{theirs}_{metric}"] = (summary[metric][ours], vllm[f"{theirs}_{metric}_ms"])
        pairs[f"p99_{metric}"] = (summary[metric]["p99_ms"], vllm[f"p99_{metric}_ms"])
    assert len(pairs) == 9 + 4 * 5
    off = {name: pair for name, pair in pairs.items() if pair[0] != pair[1]}
    assert not off, off


def test_completions_sweep_reports_vllms_figures(plain: tuple[str, Path], tmp_path: Path) -> None:
    url, model = plain
    argv = ["--url", url, "--model", MODEL_ID, "--endpoint", "completions", "--tokenizer", str(model)]
    argv += ["--prompts", "random", "--random-input-len", "32", "--random-output-len", "12", "--ignore-eos"]
    argv += ["--concurrency", "1,2", "--num-requests", "4", "--slo-ttft-ms", "60000", "--slo-tpot-ms", "1"]
    results = bench(argv, tmp_path)
    assert [level["label"] for level in results["levels"]] == ["c=1", "c=2"]
    for level in results["levels"]:
        vllm = json.loads((tmp_path / level["source"]["result_file"]).read_text())
        assert (vllm["backend"], vllm["max_concurrency"], vllm["num_prompts"]) == (
            "openai",
            level["plan"]["concurrency"],
            4,
        )
        assert_summary_is_vllms(level["summary"], vllm)
        assert level["summary"]["completed"] == 4 and level["summary"]["total_output_tokens"] == 4 * 12
        # a TPOT objective of 1 ms is missed by every request on this CPU: the SLOs reach vLLM
        assert level["summary"]["request_goodput"] == 0.0
        assert [r["success"] for r in level["records"]] == [True] * 4
        assert [r["output_tokens"] for r in level["records"]] == [12] * 4
    names = {p.name for p in tmp_path.iterdir()}
    assert {"summary.md", "latency_cdf.png", "latency_vs_throughput.png", "vllm-c-1.log"} <= names


def test_chat_set_keeps_each_prompts_max_tokens(plain: tuple[str, Path], tmp_path: Path) -> None:
    url, model = plain
    argv = ["--url", url, "--model", MODEL_ID, "--endpoint", "chat", "--tokenizer", str(model)]
    argv += ["--prompts", "chat", "--ignore-eos", "--concurrency", "2", "--num-requests", "3", "--save-text"]
    argv += ["--seed", str(CHAT_SEED)]
    level = bench(argv, tmp_path)["levels"][0]
    vllm = json.loads((tmp_path / level["source"]["result_file"]).read_text())
    assert vllm["backend"] == "openai-chat"
    assert_summary_is_vllms(level["summary"], vllm)
    # vLLM's ShareGPT loader gives each request the length of its reference answer: the file the
    # command wrote makes that the prompt's own max_tokens, which --ignore-eos then decodes exactly.
    expected = [p.max_tokens for p in chat_prompts(None, seed=CHAT_SEED)[:3]]
    assert len(set(expected)) == 3, expected  # distinct lengths: no common cap could produce them
    assert [r["output_tokens"] for r in level["records"]] == expected
    assert all(r["output_text"] for r in level["records"])
