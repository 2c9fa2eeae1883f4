"""Which running requests a higher-class arrival preempts (pure).

A request of a class with ``max_preemptions`` > 0 may be stopped in the engine and queued again
when a request of a higher class starts, as long as none of its answer has reached its client (a
stream's first bytes, a JSON answer's whole body): it then starts over, so the client sees one
answer, as if the request had waited in the queue. Each request is preempted at most its class's
``max_preemptions`` times, so batch work wasted on a busy router is bounded (at most that many
partial runs per request) and no request is starved by a steady higher-class stream.

An arrival preempts every such request of a lower class: the engine then runs the arrival's first
step without them (vLLM never preempts a running sequence for a waiting one of higher priority, so
this is the only way to give a higher class the engine at once).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar


class Running(Protocol):
    @property
    def priority(self) -> int: ...  # 0 is the highest class

    @property
    def preemptions(self) -> int: ...

    @property
    def answering(self) -> bool: ...  # some of its answer has reached the client


R = TypeVar("R", bound=Running)


@dataclass(frozen=True)
class PreemptionRule:
    # max_preemptions[p]: how often a request of class p may be preempted (0: never).
    max_preemptions: tuple[int, ...]

    @property
    def enabled(self) -> bool:
        return any(self.max_preemptions)

    def preemptible(self, request: Running) -> bool:
        return not request.answering and request.preemptions < self.max_preemptions[request.priority]

    def victims(self, arriving_priority: int, running: Iterable[R]) -> list[R]:
        """The running requests an arrival of ``arriving_priority`` preempts."""
        return [r for r in running if r.priority > arriving_priority and self.preemptible(r)]
