"""The load generator against a tiny fake OpenAI server on 127.0.0.1 (ephemeral port, known delays).

The fake's behaviour is chosen by the request's ``model``: "ok", "no-usage", "cut", "drop",
"busy" (429), "slow", "error-event". Timing checks allow for a shared, busy CI machine.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from serve_app import cli
from serve_app.bench.endpoints import send_request
from serve_app.bench.loadgen import BenchError, poisson_offsets, run_load
from serve_app.bench.prompts import PromptSetError, chat_prompts, file_prompts, random_prompts
from serve_app.bench.records import Prompt, RequestRecord
from serve_app.bench.report import level_from_run, markdown_table
from serve_app.bench.settings import LoadPlan, Target
from serve_app.bench.sse import SseParser
from serve_app.bench.stats import Slo, summarize

# Real time, not the virtual-time loop (tests/unit/virtual_time.py): the load generator is timed
# over a real TCP connection, and a loop that moved its clock on while bytes were in flight would
# time out or mis-time them. The fake server's delays below are therefore real sleeps, kept short.
pytestmark = pytest.mark.real_time

FIRST_TOKEN_S = 0.15
GAP_S = 0.05
TOKENS = 5
PROMPT = Prompt(prompt_tokens=3, max_tokens=TOKENS, text="hello there friend")


def _event(body: dict) -> bytes:
    return f"data: {json.dumps(body)}\n\n".encode()


def _chunk(text: str, finish: str | None = None) -> bytes:
    return _event({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]})


class FakeOpenAI:
    def __init__(self) -> None:
        self.in_flight = 0
        self.max_in_flight = 0

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        mode = body["model"]
        if mode == "busy":
            return web.json_response({"error": {"message": "queue full"}}, status=429)
        if mode == "slow":
            await asyncio.sleep(1.0)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._stream(request, mode)
        finally:
            self.in_flight -= 1

    async def _stream(self, request: web.Request, mode: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await asyncio.sleep(FIRST_TOKEN_S)
        for i in range(TOKENS):
            if i:
                await asyncio.sleep(GAP_S)
            if mode in ("cut", "drop", "error-event") and i == 2:
                break
            await response.write(_chunk(f"w{i} ", "length" if i == TOKENS - 1 else None))
        if mode == "drop":
            assert request.transport is not None
            request.transport.close()  # the connection breaks mid-stream
            return response
        if mode == "error-event":
            await response.write(_event({"error": {"message": "engine died", "code": 500}}))
        if mode == "ok":
            await response.write(_event({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": TOKENS}}))
        if mode != "cut":
            await response.write(b"data: [DONE]\n\n")
        return response

    async def generate(self, request: web.Request) -> web.Response:
        body = await request.json()
        words = " ".join(["tok"] * body["max_new_tokens"])
        return web.json_response({"text": words, "prompt_tokens": 4, "completion_tokens": body["max_new_tokens"]})


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeOpenAI, str]]:
    handler = FakeOpenAI()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler.chat)
    app.router.add_post("/generate", handler.generate)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield handler, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def one(url: str, model: str, timeout_s: float = 10.0) -> RequestRecord:
    plan = LoadPlan(concurrency=1, num_requests=1, warmup_requests=0)
    result = await run_load(Target(url=url, model=model, timeout_s=timeout_s), plan, [PROMPT], progress=False)
    return result.records[0]


async def test_streamed_timings_match_the_server_delays(fake: tuple[FakeOpenAI, str]) -> None:
    record = await one(fake[1], "ok")
    assert record.success, record.error
    assert FIRST_TOKEN_S <= record.ttft_s < FIRST_TOKEN_S + 0.1
    assert len(record.itl_s) == TOKENS - 1
    assert sum(record.itl_s) / len(record.itl_s) == pytest.approx(GAP_S, abs=0.02)
    assert record.latency_s == pytest.approx(record.ttft_s + sum(record.itl_s))
    assert (record.output_tokens, record.output_tokens_source, record.prompt_tokens) == (TOKENS, "usage", 11)
    assert record.output_text == "w0 w1 w2 w3 w4 "


async def test_tokens_are_counted_from_chunks_without_usage(fake: tuple[FakeOpenAI, str]) -> None:
    record = await one(fake[1], "no-usage")
    assert record.success
    assert (record.output_tokens, record.output_tokens_source) == (TOKENS, "chunks")


@pytest.mark.parametrize(
    ("model", "kind"),
    [("cut", "cut_stream"), ("drop", "cut_stream"), ("busy", "http_429"), ("error-event", "stream_error")],
)
async def test_failures_are_recorded_by_kind(fake: tuple[FakeOpenAI, str], model: str, kind: str) -> None:
    record = await one(fake[1], model)
    assert not record.success
    assert record.error_kind == kind


async def test_timeout_is_its_own_kind(fake: tuple[FakeOpenAI, str]) -> None:
    record = await one(fake[1], "slow", timeout_s=0.2)
    assert record.error_kind == "timeout"


async def test_refused_connection_is_its_own_kind() -> None:
    with socket.socket() as sock:  # a loopback port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    record = await one(f"http://127.0.0.1:{port}", "ok")
    assert record.error_kind == "connection"


async def test_concurrency_cap_holds(fake: tuple[FakeOpenAI, str]) -> None:
    handler, url = fake
    plan = LoadPlan(concurrency=3, num_requests=7, warmup_requests=1)
    result = await run_load(Target(url=url, model="ok"), plan, [PROMPT], progress=False)
    assert handler.max_in_flight == 3
    summary = summarize(result.records, result.duration_s)
    assert (summary.completed, summary.failed, summary.total_output_tokens) == (7, 0, 7 * TOKENS)
    # 7 requests of ~0.35 s, 3 at a time: three waves.
    assert 3 * 0.35 <= result.duration_s < 3 * 0.35 + 1.0
    assert sorted(r.index for r in result.records) == list(range(7))


async def test_a_streamed_run_reports_ttft_tpot_and_itl(fake: tuple[FakeOpenAI, str]) -> None:
    """The load generator's own streamed requests (the fault ledger's loads) keep every streaming
    figure: the summary and the report's table carry them, as for vLLM's benchmark's runs."""
    plan = LoadPlan(concurrency=2, num_requests=4, warmup_requests=0)
    result = await run_load(Target(url=fake[1], model="ok"), plan, [PROMPT], progress=False)
    summary = summarize(result.records, result.duration_s, Slo(ttft_ms=1000, tpot_ms=1000))
    assert (summary.ttft.count, summary.tpot.count, summary.itl.count) == (4, 4, 4 * (TOKENS - 1))
    assert FIRST_TOKEN_S * 1000 <= summary.ttft.p50_ms < (FIRST_TOKEN_S + 0.1) * 1000
    assert summary.tpot.p50_ms == pytest.approx(GAP_S * 1000, abs=20)  # (latency - ttft) / 4 gaps
    assert summary.request_goodput == pytest.approx(4 / result.duration_s)
    row = markdown_table([level_from_run(result, summary)]).splitlines()[2].split(" | ")
    ttft, tpot, itl = row[7:10]
    assert "-" not in (ttft, tpot, itl) and ttft.startswith(f"{summary.ttft.p50_ms:.1f} / ")


async def test_poisson_arrivals_spread_over_count_over_rate(fake: tuple[FakeOpenAI, str]) -> None:
    plan = LoadPlan(rate=40.0, num_requests=12, warmup_requests=0, seed=7)
    result = await run_load(Target(url=fake[1], model="ok"), plan, [PROMPT], progress=False)
    starts = sorted(r.start_s for r in result.records)
    # The schedule ends at count / rate; a start can only be late (event-loop lag on a loaded
    # machine), never early, so the wall-clock check is one-sided with room for that lag.
    assert 12 / 40.0 - 0.02 <= starts[-1] <= 12 / 40.0 + 0.5
    assert fake[0].max_in_flight > 1  # no cap: arrivals overlap the 0.35 s requests


async def test_duration_mode_stops_starting_requests(fake: tuple[FakeOpenAI, str]) -> None:
    plan = LoadPlan(concurrency=2, duration_s=0.5, warmup_requests=0)
    result = await run_load(Target(url=fake[1], model="ok"), plan, [PROMPT], progress=False)
    assert 2 <= len(result.records) <= 4  # two slots, ~0.35 s a request, 0.5 s to start new ones
    assert all(r.start_s < 0.5 for r in result.records)
    assert all(r.success for r in result.records)


async def test_generate_endpoint_without_streaming(fake: tuple[FakeOpenAI, str]) -> None:
    target = Target(url=fake[1], model="m", endpoint="generate", stream=False)
    record = RequestRecord(index=0, prompt_tokens=1, max_tokens=6)
    await send_request_in_session(target, record, Prompt(prompt_tokens=1, max_tokens=6, text="hi"))
    assert record.success
    assert (record.ttft_s, record.output_tokens, record.output_tokens_source) == (None, 6, "usage")
    assert record.latency_s > 0


async def test_a_client_that_cuts_the_stream_after_n_chunks(fake: tuple[FakeOpenAI, str]) -> None:
    import aiohttp

    record = RequestRecord(index=0, prompt_tokens=3, max_tokens=TOKENS)
    async with aiohttp.ClientSession() as session:
        await send_request(session, Target(url=fake[1], model="ok"), record, PROMPT, cut_after_chunks=2)
    assert (record.success, record.error_kind, record.output_tokens) == (False, "client_cut", 2)
    assert record.ttft_s is not None and not record.stream_done


async def send_request_in_session(target: Target, record: RequestRecord, prompt: Prompt) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        await send_request(session, target, record, prompt)


async def test_failed_warm_up_stops_the_run(fake: tuple[FakeOpenAI, str]) -> None:
    plan = LoadPlan(concurrency=1, num_requests=3, warmup_requests=1)
    with pytest.raises(BenchError, match="http_429"):
        await run_load(Target(url=fake[1], model="busy"), plan, [PROMPT], progress=False)


def test_poisson_offsets_are_rescaled_and_increasing() -> None:
    offsets = poisson_offsets(rate=4.0, count=50, rng=random.Random(1))
    assert offsets[-1] == pytest.approx(50 / 4.0)
    assert offsets == sorted(offsets)
    assert offsets != poisson_offsets(rate=4.0, count=50, rng=random.Random(2))


def test_sse_parser_handles_split_events_comments_and_crlf() -> None:
    parser = SseParser()
    data = ': ping\r\n\r\ndata: {"a": "é"}\r\n\r\ndata: one\ndata: two\n\ndata: [DONE]'.encode()
    payloads = []
    for i in range(len(data)):  # byte by byte: splits the two-byte "é" too
        payloads += parser.feed(data[i : i + 1])
    payloads += parser.close()
    assert payloads == ['{"a": "é"}', "one\ntwo", "[DONE]"]


def test_target_url_and_generate_stream_rule() -> None:
    assert Target(url="http://h:1/", model="m").request_url == "http://h:1/v1/chat/completions"
    assert Target(url="http://h:1/v1/completions", model="m", endpoint="completions").request_url.endswith(
        ":1/v1/completions"
    )
    with pytest.raises(ValueError, match="does not stream"):
        Target(url="http://h:1", model="m", endpoint="generate")


async def test_bench_command_writes_every_artefact(fake: tuple[FakeOpenAI, str], tmp_path: Path) -> None:
    # /generate: the load generator's path (streaming chat and completions run vLLM's benchmark).
    argv = ["bench", "--url", fake[1], "--model", "ok", "--concurrency", "1,2", "--num-requests", "3"]
    argv += ["--endpoint", "generate", "--prompts", "random", "--random-input-len", "8", "--slo-e2e-ms", "10000"]
    argv += ["--no-progress"]
    # The command runs its own event loop: give it a thread while this loop keeps serving the fake.
    assert await asyncio.to_thread(cli.main, [*argv, "--out", str(tmp_path)]) == 0
    check_artefacts(tmp_path)


def check_artefacts(out: Path) -> None:
    names = {p.name for p in out.iterdir()}
    assert names >= {"results.json", "summary.md", "command.txt", "environment.json", "latency_cdf.png"}
    assert "latency_vs_throughput.png" in names  # a sweep of two levels
    results = json.loads((out / "results.json").read_text())
    assert [level["label"] for level in results["levels"]] == ["c=1", "c=2"]
    for level in results["levels"]:
        summary = level["summary"]
        assert (summary["completed"], len(level["records"])) == (3, 3)
        assert summary["request_goodput"] == pytest.approx(3 / summary["duration_s"])
    assert "| c=2 | 3 | 0 |" in (out / "summary.md").read_text()
    command = (out / "command.txt").read_text().split()
    assert command[:2] == ["serve-app", "bench"]
    assert cli.build_parser().parse_args(command[1:]).concurrency == [1, 2]  # the command replays


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        (["--model", "busy", "--no-stream"], 1),  # the warm-up gets a 429
        (["--model", "ok", "--endpoint", "generate", "--slo-ttft-ms", "5"], 2),  # no TTFT without streaming
        (["--model", "ok", "--no-stream", "--concurrency", "1,2", "--rate", "1,2"], 2),  # two sweep axes
    ],
)
async def test_bench_command_exit_codes(fake: tuple[FakeOpenAI, str], extra: list[str], code: int) -> None:
    argv = ["bench", "--url", fake[1], "--num-requests", "1", "--no-progress", *extra]
    assert await asyncio.to_thread(cli.main, argv) == code


class CharTokenizer:
    """One token a letter: enough to check that random prompts get the asked length."""

    vocab_size = 28
    all_special_ids = [0, 1]

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) - ord("a") + 2 for c in text if c.isalpha()]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i - 2 + ord("a")) for i in ids if i >= 2)


def test_random_prompts_have_the_asked_length() -> None:
    approx = random_prompts(count=3, input_len=40, max_tokens=7, seed=1)
    assert [len(p.text.split()) for p in approx] == [40, 40, 40]
    exact = random_prompts(count=3, input_len=25, max_tokens=7, seed=1, tokenizer=CharTokenizer())
    assert [p.prompt_tokens for p in exact] == [25, 25, 25]
    assert len({p.text for p in exact}) == 3
    assert exact == random_prompts(count=3, input_len=25, max_tokens=7, seed=1, tokenizer=CharTokenizer())


def test_shipped_chat_set() -> None:
    prompts = chat_prompts(max_tokens=None, seed=0)
    assert len(prompts) == 64
    assert all(p.messages and p.messages[-1]["role"] == "user" and 64 <= p.max_tokens <= 256 for p in prompts)
    assert {p.max_tokens for p in chat_prompts(max_tokens=32, seed=0)} == {32}
    assert [p.messages for p in chat_prompts(None, seed=1)] != [p.messages for p in prompts]  # seed shuffles


def test_prompt_files(tmp_path: Path) -> None:
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "abcd efgh", "max_tokens": 9}\n\n{"messages": [{"role": "user", "content": "hi"}]}\n')
    first, second = file_prompts(jsonl, max_tokens=None)
    assert (first.text, first.max_tokens, first.prompt_tokens) == ("abcd efgh", 9, 3)  # ~4 characters a token
    assert second.as_text() == "User: hi\nAssistant:"
    txt = tmp_path / "p.txt"
    txt.write_text("one prompt\nanother one\n")
    assert [p.text for p in file_prompts(txt, max_tokens=5)] == ["one prompt", "another one"]
    jsonl.write_text('{"prompt": "ok"}\n{"text": "wrong key"}\n')
    with pytest.raises(PromptSetError, match="line 2"):
        file_prompts(jsonl, max_tokens=None)
