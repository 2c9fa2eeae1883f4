"""Load for fault scenarios: closed-loop clients whose every request goes into a :class:`Ledger`.

The clients run on an asyncio loop in a background thread, so that a (blocking) test can inject a
fault while they run and mark its time with :meth:`FaultLoad.mark_fault`. Each request carries a
unique ``X-Request-Id`` and a prompt whose token count is known, which the ledger checks against
what comes back. A client that gets an error waits for ``Retry-After`` (capped; half a second
without one) before its next request, as a well-behaved client does.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp

from serve_app.bench.endpoints import send_request
from serve_app.bench.ledger import Ledger
from serve_app.bench.records import Prompt, RequestRecord
from serve_app.bench.settings import Target

# Filler repeated to give each prompt a different length (one token per repetition for most tokenizers).
_FILLER = " one"


@dataclass(frozen=True)
class LedgerPrompt:
    prompt: Prompt
    expected_prompt_tokens: int


def ledger_prompts(count_tokens: Callable[[str], int], variants: int, max_tokens: int) -> list[LedgerPrompt]:
    """``variants`` prompts of pairwise different token counts (as the server's tokenizer counts)."""
    prompts: list[LedgerPrompt] = []
    seen: set[int] = set()
    k = 0
    while len(prompts) < variants:
        text = "Count the words that follow:" + _FILLER * k
        k += 1
        tokens = count_tokens(text)
        if tokens in seen:
            continue
        seen.add(tokens)
        prompts.append(LedgerPrompt(Prompt(prompt_tokens=tokens, max_tokens=max_tokens, text=text), tokens))
    return prompts


def _retry_wait_s(record: RequestRecord, cap_s: float) -> float:
    """After a failure, wait as told by Retry-After, else half a second (capped): no tight retry loops."""
    if record.success:
        return 0.0
    try:
        return min(cap_s, max(0.0, float(record.retry_after))) if record.retry_after else min(cap_s, 0.5)
    except ValueError:
        return min(cap_s, 0.5)


class FaultLoad:
    """``clients`` closed-loop clients (each sends ``rounds`` requests, or until stopped)."""

    def __init__(
        self,
        target: Target,
        prompts: Sequence[LedgerPrompt],
        ledger: Ledger,
        clients: int,
        rounds: int | None = None,
        retry_wait_cap_s: float = 1.0,
        cut_after_chunks: int | None = None,
    ) -> None:
        """``cut_after_chunks``: every stream is closed by its client once it has that many token
        chunks (a disconnect storm); None reads every answer to its end."""
        self.target, self.prompts, self.ledger = target, list(prompts), ledger
        self.cut_after_chunks = cut_after_chunks
        self.clients, self.rounds, self.retry_wait_cap_s = clients, rounds, retry_wait_cap_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._origin = time.perf_counter()
        self._sequence = 0

    def now(self) -> float:
        """Seconds on the scenario's clock (the ledger's time axis)."""
        return time.perf_counter() - self._origin

    def mark_fault(self) -> float:
        self.ledger.fault_at_s = self.now()
        return self.ledger.fault_at_s

    def start(self) -> FaultLoad:
        self._thread.start()
        return self

    def stop(self, timeout_s: float | None = None) -> bool:
        """No new requests; wait (up to ``timeout_s``, default the request deadline + 30 s) for the
        ones in flight. False if they did not all finish."""
        self._stop.set()
        self._thread.join(timeout=timeout_s if timeout_s is not None else self.target.timeout_s + 30)
        return not self._thread.is_alive()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait for clients with a fixed number of rounds to finish them."""
        self._thread.join(timeout=timeout_s if timeout_s is not None else self.target.timeout_s + 30)
        return not self._thread.is_alive()

    def __enter__(self) -> FaultLoad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _main(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        timeout = aiohttp.ClientTimeout(total=self.target.timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(*(self._client(session) for _ in range(self.clients)))

    async def _client(self, session: aiohttp.ClientSession) -> None:
        done = 0
        while not self._stop.is_set() and (self.rounds is None or done < self.rounds):
            index, self._sequence = self._sequence, self._sequence + 1
            chosen = self.prompts[index % len(self.prompts)]
            record = RequestRecord(
                index=index,
                prompt_tokens=chosen.prompt.prompt_tokens,
                max_tokens=chosen.prompt.max_tokens,
                request_id=f"fault-{uuid.uuid4().hex}",
            )
            record.start_s = self.now()
            await send_request(session, self.target, record, chosen.prompt, cut_after_chunks=self.cut_after_chunks)
            self.ledger.add(record, chosen.expected_prompt_tokens)
            done += 1
            if wait_s := _retry_wait_s(record, self.retry_wait_cap_s):
                await asyncio.sleep(wait_s)
