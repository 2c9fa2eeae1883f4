"""``serve-app bench`` on chat and completions endpoints: vLLM's own benchmark makes the load.

One load level is one run of ``vllm bench serve`` (``serve_app.engine.bench_serve``, in a process
of its own: this package never imports vLLM) with ``--save-result --save-detailed``. Its JSON result
file stays next to the report, and its figures are read back, unchanged, into the report's
:class:`~serve_app.bench.stats.Summary` and per-request rows. Everything here is argument building
and mapping, except :func:`write_dataset` (a file) and :func:`run_level` (the subprocess).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serve_app.bench.prompts import PromptSetError, chat_prompts, file_prompts, load_tokenizer
from serve_app.bench.records import Prompt
from serve_app.bench.settings import ENDPOINT_PATHS
from serve_app.bench.stats import Distribution, Slo, Summary
from serve_app.errors import ServeAppError

PERCENTILES = (50, 95, 99)
METRICS = ("ttft", "tpot", "itl", "e2el")
BACKENDS = {"chat": "openai-chat", "completions": "openai"}
RUNNER = "serve_app.engine.bench_serve"


class VllmBenchError(ServeAppError, RuntimeError):
    """vLLM's benchmark exited with an error or left no result file."""


@dataclass(frozen=True)
class VllmTarget:
    """What every level of a run shares: the server, the request shape and the prompt set."""

    url: str
    endpoint: str  # chat | completions
    model: str
    tokenizer: str
    dataset: tuple[str, ...]  # vLLM's dataset flags (see random_dataset / file_dataset)
    seed: int = 0
    ignore_eos: bool = False
    temperature: float | None = None
    slo: Slo = field(default_factory=Slo)
    progress: bool = True


def split_url(url: str, endpoint: str) -> str:
    """The server root: ``url`` may already be the full endpoint URL, as for the own load generator."""
    base, path = url.rstrip("/"), ENDPOINT_PATHS[endpoint]
    return base[: -len(path)] if base.endswith(path) else base


def random_dataset(input_len: int, output_len: int) -> tuple[str, ...]:
    return ("--dataset-name", "random", "--random-input-len", str(input_len), "--random-output-len", str(output_len))


def file_dataset(path: Path) -> tuple[str, ...]:
    """A file written by :func:`write_dataset`, its order kept (it is shuffled by our seed already).
    vLLM's ShareGPT format, not its "custom" one: that one reads JSON lines with pandas, which this
    project's environment leaves out (requirements/eval.txt says why)."""
    return ("--dataset-name", "sharegpt", "--dataset-path", str(path), "--disable-shuffle")


def prompt_text(prompt: Prompt, endpoint: str) -> str:
    """vLLM's benchmark sends one user message on the chat endpoint: a one-message prompt is sent as
    it is, a longer conversation flattened into that message (the transcript completions get)."""
    if endpoint == "chat" and prompt.messages is not None and len(prompt.messages) == 1:
        return prompt.messages[0]["content"]
    return prompt.as_text()


def answer_of(tokens: int, count: Callable[[str], int]) -> str:
    """A reference answer of exactly ``tokens`` tokens by vLLM's count: in the ShareGPT format a
    request's max tokens is the length of its reference answer. " the" is one token in the usual
    BPE vocabularies; ``count`` (the tokenizer's, special tokens included) checks it."""
    extra = count("")
    text = " the" * max(0, tokens - extra)
    if count(text) != tokens:
        raise PromptSetError(f"cannot write an answer of {tokens} tokens with this tokenizer")
    return text


def write_dataset(prompts: Sequence[Prompt], endpoint: str, path: Path, count: Callable[[str], int]) -> Path:
    """The prompt set as a ShareGPT file: each prompt the first turn, an answer of its max tokens
    the second. vLLM skips prompts under 4 tokens or over 1024 and answers under 4 tokens."""
    answers: dict[int, str] = {}
    rows = []
    for p in prompts:
        if p.max_tokens not in answers:
            answers[p.max_tokens] = answer_of(p.max_tokens, count)
        turns = [{"from": "human", "value": prompt_text(p, endpoint)}, {"from": "gpt", "value": answers[p.max_tokens]}]
        rows.append({"conversations": turns})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=0), encoding="utf-8")
    return path


def dataset(
    spec: str, endpoint: str, out: Path, tokenizer: str, seed: int, max_tokens: int | None, random_lens: tuple[int, int]
) -> tuple[str, ...]:
    """vLLM's dataset flags for ``--prompts SPEC``: its random dataset, or the chat set or a prompt
    file written into ``out`` as ShareGPT."""
    if spec == "random":
        return random_dataset(random_lens[0], max_tokens or random_lens[1])
    prompt_set = chat_prompts(max_tokens, seed) if spec == "chat" else file_prompts(Path(spec), max_tokens)
    tok = load_tokenizer(tokenizer)
    # vLLM counts with the tokenizer's defaults (special tokens included), so must we.
    path = write_dataset(prompt_set, endpoint, out / "prompts.sharegpt.json", lambda text: len(tok.encode(text)))
    return file_dataset(path)


def goodput_argv(slo: Slo) -> list[str]:
    slos = (("ttft", slo.ttft_ms), ("tpot", slo.tpot_ms), ("e2el", slo.e2el_ms))
    given = [f"{name}:{value:g}" for name, value in slos if value is not None]
    return ["--goodput", *given] if given else []


def warmup_argv(warmup: int) -> list[str]:
    """``--warmup N``: N untimed requests of which the first must succeed. vLLM's "ready check" is
    that first request (with a one-second budget it is sent once, not retried; a failure stops the
    run), its warm-ups the other N - 1."""
    if warmup <= 0:
        return ["--ready-check-timeout-sec", "0", "--num-warmups", "0"]
    return ["--ready-check-timeout-sec", "1", "--num-warmups", str(warmup - 1)]


def level_argv(
    target: VllmTarget, concurrency: int | None, rate: float | None, num_requests: int, warmup: int, result: Path
) -> list[str]:
    """The ``vllm bench serve`` arguments of one load level, saving its result to ``result``."""
    argv = ["--backend", BACKENDS[target.endpoint], "--base-url", split_url(target.url, target.endpoint)]
    argv += ["--endpoint", ENDPOINT_PATHS[target.endpoint], "--model", target.model, "--tokenizer", target.tokenizer]
    argv += [*target.dataset, "--num-prompts", str(num_requests), "--seed", str(target.seed)]
    argv += ["--request-rate", "inf" if rate is None else f"{rate:g}"]
    if concurrency is not None:
        argv += ["--max-concurrency", str(concurrency)]
    argv += warmup_argv(warmup)
    argv += ["--percentile-metrics", ",".join(METRICS), "--metric-percentiles", ",".join(map(str, PERCENTILES))]
    argv += goodput_argv(target.slo)
    if target.ignore_eos:
        argv.append("--ignore-eos")
    if target.temperature is not None:
        argv += ["--temperature", f"{target.temperature:g}"]
    if not target.progress:
        argv.append("--disable-tqdm")
    return [
        *argv,
        "--save-result",
        "--save-detailed",
        "--result-dir",
        str(result.parent),
        "--result-filename",
        result.name,
    ]


def command(argv: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", RUNNER, *argv]


def run_level(argv: Sequence[str], result: Path, log: Path) -> dict[str, Any]:
    """Run vLLM's benchmark (its output into ``log``) and return its saved result."""
    with log.open("w", encoding="utf-8") as sink:
        proc = subprocess.run(command(argv), stdout=sink, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0 or not result.is_file():
        lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        # Triton's CPU stub reports leaked bindings at exit, after the error that matters.
        cut = next((i for i, line in enumerate(lines) if line.startswith("nanobind: leaked")), len(lines))
        tail = lines[:cut][-15:]
        raise VllmBenchError(f"vLLM's benchmark exited with {proc.returncode} (log {log}):\n" + "\n".join(tail))
    data: dict[str, Any] = json.loads(result.read_text(encoding="utf-8"))
    return data


def _distribution(result: dict[str, Any], metric: str, count: int) -> Distribution:
    return Distribution(
        count=count,
        mean_ms=float(result[f"mean_{metric}_ms"]),
        std_ms=float(result[f"std_{metric}_ms"]),
        p50_ms=float(result[f"p50_{metric}_ms"]),
        p95_ms=float(result[f"p95_{metric}_ms"]),
        p99_ms=float(result[f"p99_{metric}_ms"]),
    )


def error_kind(error: str) -> str:
    """A failed request's kind: the last line of vLLM's error text (an HTTP reason, or an
    exception's last line), shortened."""
    lines = error.strip().splitlines()
    return lines[-1][:80] if lines else "unknown"


def records(result: dict[str, Any], include_text: bool = False) -> list[dict[str, Any]]:
    """Per-request rows from vLLM's detailed result. vLLM saves no success flag: a request
    succeeded when it has no error text and a latency (a failed one keeps latency 0)."""
    rows = []
    texts = result.get("generated_texts") or []
    origin = min(result["start_times"], default=0.0)
    for i, latency in enumerate(result["latencies"]):
        error = result["errors"][i] or ""
        ok = not error and latency > 0
        row = {
            "index": i,
            "start_s": result["start_times"][i] - origin,
            "prompt_tokens": result["input_lens"][i],
            "output_tokens": result["output_lens"][i],
            "ttft_s": result["ttfts"][i] if ok else None,
            "itl_s": result["itls"][i],
            "latency_s": latency,
            "success": ok,
            "error": error[-500:],
        }
        if include_text and i < len(texts):
            row["output_text"] = texts[i]
        rows.append(row)
    return rows


def summary(result: dict[str, Any], rows: Sequence[dict[str, Any]]) -> Summary:
    """vLLM's figures as the report's summary; the counts of values come from the rows."""
    ok = [r for r in rows if r["success"]]
    errors = Counter(error_kind(r["error"]) for r in rows if not r["success"])
    counts = {
        "ttft": len(ok),
        "tpot": sum(1 for r in ok if r["output_tokens"] > 1),
        "itl": sum(len(r["itl_s"]) for r in ok),
        "e2el": len(ok),
    }
    goodput = result.get("request_goodput")
    return Summary(
        completed=int(result["completed"]),
        failed=int(result["failed"]),
        errors=dict(sorted(errors.items())),
        duration_s=float(result["duration"]),
        total_input_tokens=int(result["total_input_tokens"]),
        total_output_tokens=int(result["total_output_tokens"]),
        request_throughput=float(result["request_throughput"]),
        output_throughput=float(result["output_throughput"]),
        total_token_throughput=float(result["total_token_throughput"]),
        request_goodput=None if goodput is None else float(goodput),
        ttft=_distribution(result, "ttft", counts["ttft"]),
        tpot=_distribution(result, "tpot", counts["tpot"]),
        itl=_distribution(result, "itl", counts["itl"]),
        e2el=_distribution(result, "e2el", counts["e2el"]),
    )
