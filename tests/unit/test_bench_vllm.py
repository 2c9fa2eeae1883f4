"""``serve-app bench`` on vLLM's benchmark: the arguments it builds, the prompt file it writes, and
how vLLM's result file becomes the report (no vLLM here: its result is a hand-made dict; the real
run is tests/integration/test_bench_vllm.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from serve_app import cli
from serve_app.bench import vllm_serve
from serve_app.bench.prompts import PromptSetError
from serve_app.bench.records import Prompt
from serve_app.bench.stats import Slo
from serve_app.commands import bench

TARGET = vllm_serve.VllmTarget(
    url="http://h:8000/v1/chat/completions",
    endpoint="chat",
    model="m",
    tokenizer="/tok",
    dataset=vllm_serve.random_dataset(32, 8),
    seed=3,
    ignore_eos=True,
    temperature=0.0,
    slo=Slo(ttft_ms=500.0, e2el_ms=2000.0),
    progress=False,
)


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_level_argv_maps_every_setting() -> None:
    argv = vllm_serve.level_argv(TARGET, 4, 2.5, 20, 2, Path("/out/vllm-c-4.json"))
    assert (flag(argv, "--backend"), flag(argv, "--base-url"), flag(argv, "--endpoint")) == (
        "openai-chat",
        "http://h:8000",
        "/v1/chat/completions",
    )
    assert (flag(argv, "--model"), flag(argv, "--tokenizer"), flag(argv, "--seed")) == ("m", "/tok", "3")
    assert (flag(argv, "--dataset-name"), flag(argv, "--random-input-len"), flag(argv, "--random-output-len")) == (
        "random",
        "32",
        "8",
    )
    assert (flag(argv, "--num-prompts"), flag(argv, "--request-rate"), flag(argv, "--max-concurrency")) == (
        "20",
        "2.5",
        "4",
    )
    # --warmup 2: vLLM's one-shot ready check (must succeed) and one more warm-up
    assert (flag(argv, "--ready-check-timeout-sec"), flag(argv, "--num-warmups")) == ("1", "1")
    assert argv[argv.index("--goodput") + 1 : argv.index("--goodput") + 3] == ["ttft:500", "e2el:2000"]
    assert flag(argv, "--percentile-metrics") == "ttft,tpot,itl,e2el"
    assert flag(argv, "--metric-percentiles") == "50,95,99"
    assert {"--ignore-eos", "--disable-tqdm", "--save-result", "--save-detailed"} <= set(argv)
    assert (flag(argv, "--temperature"), flag(argv, "--result-dir"), flag(argv, "--result-filename")) == (
        "0",
        "/out",
        "vllm-c-4.json",
    )


def test_level_argv_defaults() -> None:
    target = vllm_serve.VllmTarget(url="http://h:1", endpoint="completions", model="m", tokenizer="t", dataset=())
    argv = vllm_serve.level_argv(target, None, None, 5, 0, Path("r.json"))
    assert (flag(argv, "--backend"), flag(argv, "--endpoint"), flag(argv, "--request-rate")) == (
        "openai",
        "/v1/completions",
        "inf",
    )
    assert (flag(argv, "--ready-check-timeout-sec"), flag(argv, "--num-warmups")) == ("0", "0")
    assert not {"--max-concurrency", "--goodput", "--ignore-eos", "--temperature", "--disable-tqdm"} & set(argv)
    assert vllm_serve.command(argv)[1:3] == ["-m", "serve_app.engine.bench_serve"]


def words(text: str) -> int:
    """A stand-in tokenizer count: one token a word, plus one special token (as a BOS would be)."""
    return len(text.split()) + 1


def test_answers_have_the_asked_token_count() -> None:
    assert words(vllm_serve.answer_of(64, words)) == 64
    with pytest.raises(PromptSetError, match="answer of 7 tokens"):
        vllm_serve.answer_of(7, lambda text: len(text))  # a count that " the" does not fit


def test_dataset_file_is_sharegpt_with_one_user_turn(tmp_path: Path) -> None:
    single = Prompt(prompt_tokens=3, max_tokens=5, messages=({"role": "user", "content": "hi there"},))
    multi = Prompt(
        prompt_tokens=3,
        max_tokens=9,
        messages=({"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}),
    )
    text = Prompt(prompt_tokens=3, max_tokens=5, text="once upon")
    path = vllm_serve.write_dataset([single, multi, text], "chat", tmp_path / "d.json", words)
    rows = json.loads(path.read_text())
    firsts = [row["conversations"][0] for row in rows]
    assert [f["from"] for f in firsts] == ["human"] * 3
    assert [f["value"] for f in firsts] == ["hi there", "System: be brief\nUser: hi\nAssistant:", "once upon"]
    assert [words(row["conversations"][1]["value"]) for row in rows] == [5, 9, 5]
    completions = json.loads(vllm_serve.write_dataset([single], "completions", tmp_path / "c.json", words).read_text())
    assert completions[0]["conversations"][0]["value"] == "User: hi there\nAssistant:"
    assert vllm_serve.file_dataset(path)[:4] == ("--dataset-name", "sharegpt", "--dataset-path", str(path))


def vllm_result(goodput: float | None = 1.5) -> dict[str, Any]:
    """The slice of ``vllm bench serve --save-result --save-detailed`` that is read: three requests,
    the second failed (vLLM leaves its latency and TTFT at 0)."""
    result: dict[str, Any] = {
        "duration": 2.0,
        "completed": 2,
        "failed": 1,
        "total_input_tokens": 20,
        "total_output_tokens": 7,
        "request_throughput": 1.0,
        "request_goodput": goodput,
        "output_throughput": 3.5,
        "total_token_throughput": 13.5,
        "input_lens": [10, 10, 10],
        "output_lens": [4, 0, 3],
        "ttfts": [0.1, 0.0, 0.2],
        "itls": [[0.01, 0.02, 0.03], [], [0.05, 0.05]],
        "latencies": [0.16, 0.0, 0.3],
        "start_times": [100.0, 100.5, 101.0],
        "generated_texts": ["abcd", "", "xyz"],
        "errors": ["", "Traceback ...\naiohttp.ClientConnectorError: refused", ""],
    }
    for i, metric in enumerate(vllm_serve.METRICS):
        result |= {f"mean_{metric}_ms": 10.0 + i, f"std_{metric}_ms": 1.0 + i, f"median_{metric}_ms": 9.0 + i}
        result |= {f"p{p}_{metric}_ms": p + i for p in vllm_serve.PERCENTILES}
    return result


def test_summary_is_vllms_figures_unchanged() -> None:
    result = vllm_result()
    rows = vllm_serve.records(result, include_text=True)
    s = vllm_serve.summary(result, rows)
    assert (s.completed, s.failed, s.duration_s, s.total_input_tokens, s.total_output_tokens) == (2, 1, 2.0, 20, 7)
    assert (s.request_throughput, s.output_throughput, s.total_token_throughput, s.request_goodput) == (
        1.0,
        3.5,
        13.5,
        1.5,
    )
    for i, metric in enumerate(vllm_serve.METRICS):
        d = getattr(s, metric)
        assert (d.mean_ms, d.std_ms, d.p50_ms, d.p95_ms, d.p99_ms) == (10.0 + i, 1.0 + i, 50 + i, 95 + i, 99 + i)
    assert (s.ttft.count, s.tpot.count, s.itl.count, s.e2el.count) == (2, 2, 5, 2)
    assert s.errors == {"aiohttp.ClientConnectorError: refused": 1}
    assert vllm_serve.summary(vllm_result(goodput=None), rows).request_goodput is None


def test_records_per_request() -> None:
    rows = vllm_serve.records(vllm_result())
    assert [r["success"] for r in rows] == [True, False, True]
    assert [r["ttft_s"] for r in rows] == [0.1, None, 0.2]
    assert [r["start_s"] for r in rows] == [0.0, 0.5, 1.0]
    assert "output_text" not in rows[0]
    assert vllm_serve.records(vllm_result(), include_text=True)[2]["output_text"] == "xyz"
    assert vllm_serve.error_kind("") == "unknown"


def test_bench_command_reports_vllms_result(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def fake_run(argv: list[str], result: Path, log: Path) -> dict[str, Any]:
        calls.append(list(argv))
        return vllm_result()

    monkeypatch.setattr(vllm_serve, "run_level", fake_run)
    argv = ["bench", "--url", "http://h:1", "--model", "m", "--tokenizer", "/tok", "--prompts", "random"]
    argv += ["--concurrency", "1,4", "--num-requests", "3", "--slo-ttft-ms", "100", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    assert [flag(call, "--max-concurrency") for call in calls] == ["1", "4"]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["settings"]["load"] == "vllm bench serve"
    level = results["levels"][1]
    assert (level["label"], level["source"]["result_file"]) == ("c=4", "vllm-c-4.json")
    assert "serve_app.engine.bench_serve" in level["source"]["command"]
    assert level["summary"]["ttft"]["p99_ms"] == 99
    assert len(level["records"]) == 3
    assert "| c=4 | 2 | 1 | 1.00 | 3.5 |" in (tmp_path / "summary.md").read_text()
    assert {"latency_cdf.png", "latency_vs_throughput.png", "command.txt"} <= {p.name for p in tmp_path.iterdir()}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tokenizer", "t", "--duration", "5"], "--duration applies to --endpoint generate"),
        (["--tokenizer", "t", "--timeout", "5"], "--timeout applies to --endpoint generate"),
        ([], "--tokenizer is required"),
    ],
)
def test_flags_vllms_benchmark_lacks_are_refused(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["bench", "--url", "http://h:1", "--model", "m", *extra]) == 2
    assert message in capsys.readouterr().err


def test_which_runs_use_vllm() -> None:
    parse = cli.build_parser().parse_args
    base = ["bench", "--url", "http://h:1", "--model", "m"]
    assert bench.uses_vllm(parse(base))
    assert bench.uses_vllm(parse([*base, "--endpoint", "completions", "--stream"]))
    assert not bench.uses_vllm(parse([*base, "--no-stream"]))
    assert not bench.uses_vllm(parse([*base, "--endpoint", "generate"]))
