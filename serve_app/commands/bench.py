"""serve-app bench: load-test an OpenAI-compatible server (or ``POST /generate``) and report latencies.

Streaming chat and completions levels are run by vLLM's own benchmark (``vllm bench serve``, see
serve_app/bench/vllm_serve.py); ``/generate`` and non-streaming requests, which it cannot send, by
the project's load generator (serve_app/bench/loadgen.py). Either way one report: the sweep's
Markdown table, results.json, plots.

Examples::

    serve-app bench --url http://127.0.0.1:8000 --model smollm2-135m-instruct --concurrency 1,4,16 \\
        --num-requests 64 --prompts chat --tokenizer /tmp/mc/m --out benchmarks/results/chat-sweep
    serve-app bench --url http://127.0.0.1:8000 --model m --endpoint completions --rate 2 --num-requests 120 \\
        --prompts random --random-input-len 512 --random-output-len 128 --ignore-eos --tokenizer /tmp/mc/m
    serve-app bench --url http://127.0.0.1:8001 --model m --endpoint completions --no-stream --duration 60
"""

from __future__ import annotations

import argparse
import functools
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_NUM_REQUESTS = 200
DEFAULT_TIMEOUT_S = 600.0
_RANDOM_POOL = 1000  # random prompts generated for duration runs (cycled)


def _number_list(kind: type) -> Any:
    def parse(text: str) -> list[Any]:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError("expected at least one value")
        return values

    return parse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="benchmark a serving endpoint (TTFT, TPOT, ITL, throughput, goodput)")
    p.add_argument("--url", required=True, help="server root (http://host:port) or full endpoint URL")
    p.add_argument("--model", required=True, help="model id sent in each request")
    p.add_argument("--endpoint", choices=["chat", "completions", "generate"], default="chat")
    load = p.add_argument_group("load (a comma-separated list of either makes a sweep)")
    load.add_argument("--concurrency", type=_number_list(int), help="requests in flight, e.g. 1,4,16")
    load.add_argument("--rate", type=_number_list(float), help="Poisson arrival rate(s) in requests/s")
    length = load.add_mutually_exclusive_group()
    length.add_argument("--num-requests", type=int, help=f"requests per level (default {DEFAULT_NUM_REQUESTS})")
    length.add_argument(
        "--duration", type=float, help="seconds per level during which requests start (/generate, --no-stream)"
    )
    load.add_argument("--warmup", type=int, default=1, help="untimed requests before each level (default 1)")
    prompts = p.add_argument_group("prompts")
    prompts.add_argument("--prompts", default="chat", help="random | chat (the shipped set) | a .jsonl/.txt FILE")
    prompts.add_argument("--random-input-len", type=int, default=256, help="prompt tokens of random prompts")
    prompts.add_argument("--random-output-len", type=int, default=128, help="max tokens of random prompts")
    prompts.add_argument("--max-tokens", type=int, help="max output tokens of every request (overrides the set's)")
    prompts.add_argument(
        "--tokenizer", help="tokenizer folder: required by vLLM's benchmark (chat, completions); else exact lengths"
    )
    req = p.add_argument_group("requests")
    req.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None, help="stream (default: yes)")
    req.add_argument("--ignore-eos", action="store_true", help="ask the server to decode exactly max tokens")
    req.add_argument("--temperature", type=float, help="sampling temperature (default: the server's)")
    req.add_argument("--timeout", type=float, help="seconds per request (/generate, --no-stream; default 600)")
    slo = p.add_argument_group("goodput SLOs (milliseconds)")
    slo.add_argument("--slo-ttft-ms", type=float)
    slo.add_argument("--slo-tpot-ms", type=float)
    slo.add_argument("--slo-e2e-ms", type=float)
    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, help="folder for results.json, summary.md, plots, command and versions")
    out.add_argument("--server-command", help="how the server under test was started (recorded with the results)")
    out.add_argument("--save-text", action="store_true", help="keep generated texts in results.json")
    out.add_argument("--seed", type=int, default=0, help="seed of prompt order, random prompts and arrivals")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _plans(args: argparse.Namespace) -> list[Any]:
    from serve_app.bench.settings import LoadPlan

    concurrencies, rates = args.concurrency or [None], args.rate or [None]
    if len(concurrencies) > 1 and len(rates) > 1:
        raise ValueError("sweep over either --concurrency or --rate, not both")
    if args.concurrency is None and args.rate is None:
        concurrencies = [1]
    num = args.num_requests if args.num_requests or args.duration else DEFAULT_NUM_REQUESTS
    return [
        LoadPlan(
            concurrency=c,
            rate=r,
            num_requests=num,
            duration_s=args.duration,
            warmup_requests=args.warmup,
            seed=args.seed,
        )
        for c in concurrencies
        for r in rates
    ]


def uses_vllm(args: argparse.Namespace) -> bool:
    """Streaming chat and completions levels run on vLLM's benchmark; the rest on our load generator."""
    return bool(args.endpoint != "generate" and args.stream is not False)


def _settings(args: argparse.Namespace) -> tuple[Any, list[Any], Any]:
    from serve_app.bench.settings import Target

    stream = args.stream if args.stream is not None else args.endpoint != "generate"
    target = Target(
        url=args.url,
        model=args.model,
        endpoint=args.endpoint,
        stream=stream,
        timeout_s=args.timeout or DEFAULT_TIMEOUT_S,
        ignore_eos=args.ignore_eos,
        temperature=args.temperature,
    )
    slo = _slo(args)
    if not stream and (slo.ttft_ms is not None or slo.tpot_ms is not None):
        raise ValueError("TTFT and TPOT SLOs need a streaming endpoint (--stream)")
    return target, _plans(args), slo


def _slo(args: argparse.Namespace) -> Any:
    from serve_app.bench.stats import Slo

    return Slo(ttft_ms=args.slo_ttft_ms, tpot_ms=args.slo_tpot_ms, e2el_ms=args.slo_e2e_ms)


def _prompts(args: argparse.Namespace, tokenizer: Any, plans: list[Any]) -> list[Any]:
    from serve_app.bench import prompts

    if args.prompts == "random":
        count = max(p.num_requests or _RANDOM_POOL for p in plans)
        max_tokens = args.max_tokens or args.random_output_len
        return prompts.random_prompts(count, args.random_input_len, max_tokens, args.seed, tokenizer)
    if args.prompts == "chat":
        return prompts.chat_prompts(args.max_tokens, args.seed, tokenizer)
    return prompts.file_prompts(Path(args.prompts), args.max_tokens, tokenizer)


Todo = tuple[dict[str, Any], list[tuple[str, Callable[[], Any]]]]


def _prepare_own(args: argparse.Namespace) -> Todo:
    """The project's load generator: ``/generate`` and non-streaming requests."""
    import asyncio

    from serve_app.bench.loadgen import run_load
    from serve_app.bench.prompts import load_tokenizer, token_counter
    from serve_app.bench.report import level_from_run
    from serve_app.bench.stats import summarize

    target, plans, slo = _settings(args)
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    prompt_set = _prompts(args, tokenizer, plans)
    count = token_counter(tokenizer) if tokenizer is not None else None

    def measure(plan: Any) -> Any:
        result = asyncio.run(run_load(target, plan, prompt_set, count, progress=not args.no_progress))
        return level_from_run(result, summarize(result.records, result.duration_s, slo), args.save_text)

    settings = {"target": target.model_dump(), "prompts": args.prompts, "slo": slo.__dict__}
    settings |= {"tokenizer": args.tokenizer, "random_input_len": args.random_input_len}
    return settings, [(plan.label, functools.partial(measure, plan)) for plan in plans]


def _vllm_flag_errors(args: argparse.Namespace) -> None:
    where = "applies to --endpoint generate and --no-stream only (streaming chat and completions run vLLM's benchmark"
    if args.duration is not None:
        raise ValueError(f"--duration {where}, which sends a request count: use --num-requests)")
    if args.timeout is not None:
        raise ValueError(f"--timeout {where}, which has no per-request timeout)")
    if args.tokenizer is None:
        raise ValueError(
            "--tokenizer is required for streaming chat and completions: vLLM's benchmark counts tokens with it"
        )


def _prepare_vllm(args: argparse.Namespace) -> Todo:
    """vLLM's benchmark, one run a level; its result files (and the prompt set) go to --out."""
    import tempfile

    from serve_app.bench import vllm_serve
    from serve_app.bench.report import Level

    _vllm_flag_errors(args)
    plans, slo = _plans(args), _slo(args)
    random_lens = (args.random_input_len, args.random_output_len)
    out = args.out if args.out is not None else Path(tempfile.mkdtemp(prefix="serve-app-bench-"))
    target = vllm_serve.VllmTarget(
        url=args.url,
        endpoint=args.endpoint,
        model=args.model,
        tokenizer=args.tokenizer,
        dataset=vllm_serve.dataset(
            args.prompts, args.endpoint, out, args.tokenizer, args.seed, args.max_tokens, random_lens
        ),
        seed=args.seed,
        ignore_eos=args.ignore_eos,
        temperature=args.temperature,
        slo=slo,
        progress=not args.no_progress,
    )

    def measure(plan: Any) -> Any:
        name = "vllm-" + re.sub(r"[^0-9A-Za-z.]+", "-", plan.label).strip("-")
        result_file = out / f"{name}.json"
        argv = vllm_serve.level_argv(
            target, plan.concurrency, plan.rate, plan.num_requests, plan.warmup_requests, result_file
        )
        result = vllm_serve.run_level(argv, result_file, out / f"{name}.log")
        rows = vllm_serve.records(result, args.save_text)
        source = {"load": "vllm bench serve", "result_file": result_file.name}
        source["command"] = shlex.join(vllm_serve.command(argv))
        return Level(plan.label, plan.model_dump(), vllm_serve.summary(result, rows), rows, source)

    target_json = {"url": args.url, "model": args.model, "endpoint": args.endpoint, "stream": True}
    settings: dict[str, Any] = {"target": target_json, "load": "vllm bench serve"}
    settings |= {"prompts": args.prompts, "slo": slo.__dict__, "tokenizer": args.tokenizer}
    settings["random_input_len"] = args.random_input_len
    return settings, [(plan.label, functools.partial(measure, plan)) for plan in plans]


def equivalent_argv(args: argparse.Namespace) -> list[str]:
    """The command line that reproduces this run, every option spelled out (defaults included)."""
    argv = ["bench"]
    for key, value in vars(args).items():
        if key in ("command", "func") or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if key == "stream":
            argv.append(flag if value else "--no-stream")
        elif value is True:
            argv.append(flag)
        elif isinstance(value, list):
            argv += [flag, ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


def _print_level(level: Any) -> None:
    s = level.summary
    parts = [
        f"{level.label}: {s.completed} ok, {s.failed} failed in {s.duration_s:.1f} s",
        f"{s.request_throughput:.2f} req/s, {s.output_throughput:.1f} output tok/s",
    ]
    if s.ttft.count:
        parts.append(f"TTFT p50 {s.ttft.p50_ms:.1f} ms, TPOT p50 {s.tpot.p50_ms:.2f} ms")
    parts.append(f"E2E p50 {s.e2el.p50_ms:.0f} ms")
    if s.errors:
        parts.append(f"errors {s.errors}")
    print("; ".join(parts), file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from serve_app.bench.loadgen import BenchError
    from serve_app.bench.prompts import PromptSetError
    from serve_app.bench.report import markdown_table, write_report
    from serve_app.bench.vllm_serve import VllmBenchError

    try:
        settings, todo = _prepare_vllm(args) if uses_vllm(args) else _prepare_own(args)
    except (ValidationError, ValueError, PromptSetError) as err:
        print(f"serve-app bench: {err}", file=sys.stderr)
        return 2
    levels = []
    for label, measure in todo:
        try:
            levels.append(measure())
        except (BenchError, VllmBenchError) as err:
            print(f"serve-app bench: {label}: {err}", file=sys.stderr)
            return 1
        _print_level(levels[-1])
    print(markdown_table(levels))
    if args.out is not None:
        settings["server_command"] = args.server_command
        paths = write_report(args.out, levels, settings, equivalent_argv(args))
        print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0 if all(level.summary.completed for level in levels) else 1
