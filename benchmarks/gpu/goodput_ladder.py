"""The goodput ladder of ``goodput.py``: both servers at each offered rate, and what each run keeps.

Each rate is ``seconds`` of Poisson arrivals. A server past its capacity does not fail at once: its
queue or its batch grows through the window, and the requests sent late in it wait longest. So each
run also keeps its requests (``request_records``: when each was sent, its TTFT and TPOT; in a
``-requests.jsonl.gz`` file beside the ladder's), and
``halves`` says how many of those sent in the window's first and second half met the SLO. The
second half's goodput is closer to what the server would sustain at that rate for longer than one
window; the issue's goodput (vLLM's ``--goodput``) counts the whole window.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

SLO = {"ttft": 500, "tpot": 50}  # ms, the goal's
LENGTH_SPREAD = {"fixed": 0.0, "spread": 0.5}
LADDER_SECONDS = 10.0  # of Poisson arrivals per rate, unless the ladder is given another window

Bench = Callable[[str, list[str]], dict]  # (server URL, the benchmark's extra arguments) -> its figures


def error_kinds(errors: list[str]) -> dict[str, int]:
    """vLLM's benchmark keeps each failed request's reason: a 429/503 (admission) is a rejection."""
    kinds = {"rejected": 0, "timed_out": 0, "failed": 0}
    for error in errors:
        if not error:
            continue
        if "Too Many Requests" in error or "Service Unavailable" in error:
            kinds["rejected"] += 1
        elif "Timeout" in error:
            kinds["timed_out"] += 1
        else:
            kinds["failed"] += 1
    return kinds


def request_records(detailed: Mapping) -> list[list[float]]:
    """Per request, from ``vllm bench serve --save-detailed``'s lists: seconds after the first was
    sent, TTFT ms, TPOT ms (as vLLM's goodput counts it: the time after the first token over the
    tokens after it) and output tokens; a failed request, or one with no output, has TTFT, TPOT
    and tokens of -1 (it cannot have met the SLO)."""
    starts = detailed["start_times"]
    first = min(starts) if starts else 0.0
    records = []
    for start, ttft, itls, tokens, error in zip(
        starts, detailed["ttfts"], detailed["itls"], detailed["output_lens"], detailed["errors"], strict=True
    ):
        sent = round(start - first, 4)
        if error or not tokens:
            records.append([sent, -1, -1, -1])
            continue
        tpot = sum(itls) / (tokens - 1) * 1000 if tokens > 1 else 0.0
        records.append([sent, round(ttft * 1000, 1), round(tpot, 2), tokens])
    return records


def met_slo(record: Sequence[float], slo: Mapping[str, float]) -> bool:
    _, ttft, tpot, tokens = record
    return tokens > 0 and ttft <= slo["ttft"] and tpot <= slo["tpot"]


def halves(records: Sequence[Sequence[float]], seconds: float, slo: Mapping[str, float] = SLO) -> dict:
    """Requests sent in the first and second half of the ``seconds``-long arrival window: how many,
    how many met the SLO, and the second half's goodput (those that met it per second of the half)."""
    half = seconds / 2
    split: dict[str, dict[str, int]] = {"first_half": {"sent": 0, "good": 0}, "second_half": {"sent": 0, "good": 0}}
    for record in records:
        part = split["first_half" if record[0] < half else "second_half"]
        part["sent"] += 1
        part["good"] += met_slo(record, slo)
    return split | {"second_half_goodput_rps": round(split["second_half"]["good"] / half, 3)}


def run_rate(bench: Bench, url: str, rate: float, seed: int, spread: float, seconds: float) -> dict:
    prompts = max(20, round(rate * seconds))
    extra = ["--num-prompts", str(prompts), "--seed", str(seed), "--random-range-ratio", str(spread)]
    extra += ["--request-rate", str(rate), "--burstiness", "1.0", "--save-detailed"]
    extra += ["--goodput", f"ttft:{SLO['ttft']}", f"tpot:{SLO['tpot']}"]
    extra += ["--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99"]
    figures = bench(url, extra)
    texts = figures.pop("error_texts", [])
    records = request_records(figures.pop("detailed")) if "detailed" in figures else []
    # The kinds, and each distinct reason once: a failure must be explainable from the file.
    kept = figures | {"errors": error_kinds(texts), "error_reasons": sorted(set(texts))[:10]}
    window = prompts / rate  # the arrivals' expected span (longer than ``seconds`` where 20 prompts is the floor)
    return kept | ({"halves": halves(records, window), "requests": records} if records else {})


def ladder(
    bench: Bench,
    servers: Sequence[tuple[str, str]],
    out: Path,
    rates: Sequence[float],
    run: tuple[int, str],
    seconds: float,
) -> None:
    """One round of one length mode: each rate on both servers, the first server alternating from
    rate to rate and from round to round; the same prompts for both (one seed per round, lengths
    and rate). Written after every run, so a call cut short keeps what it measured. The requests go
    to a file of their own, a compact line per run, gzipped: the tree travels with every device call."""
    round_no, lengths = run
    rows, path = [], out / f"ladder-round{round_no}-{lengths}.json"
    requests_path = out / f"ladder-round{round_no}-{lengths}-requests.jsonl.gz"
    requests_path.unlink(missing_ok=True)
    for i, rate in enumerate(rates):
        seed = 1000 * round_no + 100 * list(LENGTH_SPREAD).index(lengths) + i
        for name, url in servers if (round_no + i) % 2 == 0 else servers[::-1]:
            row = {"round": round_no, "lengths": lengths, "rate": rate, "server": name, "seed": seed}
            row |= {"window_s": seconds} | run_rate(bench, url, rate, seed, LENGTH_SPREAD[lengths], seconds)
            requests = row.pop("requests", [])
            rows.append(row)
            with gzip.open(requests_path, "at") as handle:  # one member per run: gzip reads them as one
                handle.write(json.dumps({"rate": rate, "server": name, "requests": requests}) + "\n")
            shown = {k: row.get(k) for k in ("request_goodput", "completed", "errors", "halves")}
            print(name, rate, shown, flush=True)
            path.write_text(json.dumps({"slo_ms": SLO, "runs": rows}, indent=1))


def read_requests(path: Path) -> list[dict]:
    """A ladder file's requests, one entry per run: its rate, server and ``request_records``."""
    with gzip.open(path, "rt") as handle:
        return [json.loads(line) for line in handle if line.strip()]
