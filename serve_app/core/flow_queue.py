"""The priority admission queue of one router replica (pure, single event loop).

At most ``max_in_flight`` requests go on to replicas at once; more wait here, at most
``max_waiting`` of them. The next to go is from the highest class waiting; within a class, from
the tenant with the least attained service (tokens it was admitted, pre-charge then settled), in
arrival order within a tenant. A tenant that becomes backlogged starts no lower than the least
attained service of the class's backlogged tenants, so an idle spell earns no burst. When the
queue is full, an arrival of a higher class sheds the lowest class's most served tenant's newest
waiter; any other arrival is refused. A waiter past its deadline is dropped, never started.

An arrival that would wait past its deadline is refused at once ("late") rather than dropped
when the deadline comes: its wait is estimated from the queue ahead of it and the mean interval
between the last ``RELEASE_WINDOW`` slot releases measured while requests were waiting (the
queue's service rate when saturated; a class capped below ``max_in_flight`` gets its share of the
slots). Each class's own rate counts too, from how long its last ``RELEASE_WINDOW`` requests were
in flight over the slots it may hold (plus a margin for how much those times vary), and the longer
of the two estimates counts: a class served elsewhere, slower than the others (a pool of its own,
``model_pools``), would otherwise be estimated at the others' rate and its arrivals queued to wait
out their deadline. Until ``OWN_RATE_SAMPLES`` of a class's requests have ended, at most as many of
its requests wait as it may hold slots (one round): an unmeasured class that queued freely filled
the queue with requests its engine could not start in time. Until a rate has been measured,
nothing else is refused as late.

A class may also have a contended cap, lower than its own: while a higher class has requests
waiting or in flight, the class starts no more than that (0: none), so a lower class yields the
engine to a higher one's traffic and takes its full share back once that traffic is gone. The
wait estimate uses the class's own cap: contention comes and goes faster than a queue deadline.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["started", "queued", "refused", "late"]

# Release intervals averaged for the wait estimate. A continuous batch ends requests in bursts (many
# in one engine step, then none for a while), so a short average swings low after each burst and
# admits requests that then wait past their deadline; several batches' worth of releases do not.
RELEASE_WINDOW = 64
# A class's own estimate adds this many standard deviations of the wait (the spread of its requests'
# time in flight, times the square root of the requests ahead of it per slot). Under a flood the
# queue stays filled to where the estimate meets the deadline, so every request is admitted at that
# edge; at the mean alone, whenever its engine ran slower than average the request waited out its
# deadline (a pool under SCHED_IDLE runs its requests at very different speeds).
LATE_MARGIN_SPREADS = 2.0
# A class's own rate counts from this many of its requests' ends; until then one round of its slots
# waits. A class's first requests run while its traffic starts (a flood's first request ran
# alone, faster than the ones after it), so one or two of them set a rate the engine did not keep.
OWN_RATE_SAMPLES = 8


@dataclass(eq=False)
class Waiter:
    tenant: str
    priority: int  # 0 is the highest class
    cost: int
    deadline: float
    seq: int = 0
    started: bool = False
    started_at: float | None = None


@dataclass(frozen=True)
class Arrival:
    outcome: Outcome
    shed: tuple[Waiter, ...] = ()


@dataclass
class _Class:
    by_tenant: dict[str, deque[Waiter]] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(q) for q in self.by_tenant.values())


class FlowQueue:
    def __init__(
        self,
        max_in_flight: int,
        max_waiting: int,
        classes: int = 2,
        class_caps: tuple[int | None, ...] = (),
        contended_caps: tuple[int | None, ...] = (),
    ) -> None:
        """``class_caps[p]``: at most this many of class ``p`` in flight at once (None: no cap), so
        that slots stay free for a higher class arriving (its engine time starts at once).
        ``contended_caps[p]``: a lower cap on starting class ``p`` that holds only while a higher
        class has requests waiting or in flight (0: start none then; those in flight finish)."""
        self.max_in_flight = max_in_flight
        self.max_waiting = max_waiting
        self.in_flight = 0
        self.class_caps = class_caps + (None,) * (classes - len(class_caps))
        self.contended_caps = contended_caps + (None,) * (classes - len(contended_caps))
        self.in_flight_by_class = [0] * classes
        self.attained: dict[str, float] = {}
        self._classes = [_Class() for _ in range(classes)]
        self._seq = itertools.count()
        self._release_intervals: deque[float] = deque(maxlen=RELEASE_WINDOW)  # while saturated
        self._last_saturated_release: float | None = None
        # Per class: how long its requests were in flight (the class's own service rate).
        self._class_durations = [deque[float](maxlen=RELEASE_WINDOW) for _ in range(classes)]

    @property
    def waiting(self) -> int:
        return sum(len(c) for c in self._classes)

    def waiting_in(self, priority: int) -> int:
        return len(self._classes[priority])

    def arrive(self, waiter: Waiter, now: float | None = None) -> Arrival:
        """Start, queue or refuse ``waiter``; with ``now``, refuse it as late if its estimated
        wait ends past its deadline."""
        waiter.seq = next(self._seq)
        ahead = sum(len(c) for c in self._classes[: waiter.priority + 1])
        if self._can_start(waiter.priority) and ahead == 0:
            self._start(waiter, now)
            return Arrival("started")
        if now is not None and self._late(waiter, ahead, now):
            return Arrival("late")
        shed: tuple[Waiter, ...] = ()
        if self.waiting >= self.max_waiting:
            victim = self._shed_candidate()
            if victim is None or victim.priority <= waiter.priority:
                return Arrival("refused")
            self.remove(victim)
            shed = (victim,)
        self._enqueue(waiter)
        return Arrival("queued", shed)

    @property
    def release_interval_s(self) -> float | None:
        """Mean seconds between slot releases while requests waited (None: none measured yet)."""
        intervals = self._release_intervals
        return sum(intervals) / len(intervals) if intervals else None

    def expected_wait_s(self, priority: int, ahead: int) -> float | None:
        """Seconds until a request of ``priority`` with ``ahead`` waiters before it would start: the
        longer of the estimates at the measured saturated release rate and at the class's own rate
        (None: neither measured yet)."""
        both = (self.saturated_wait_s(priority, ahead), self.own_wait_s(priority, ahead))
        estimates = [e for e in both if e is not None]
        return max(estimates) if estimates else None

    def saturated_wait_s(self, priority: int, ahead: int) -> float | None:
        """The wait at the queue's measured saturated release rate, the class's share of the slots."""
        interval = self.release_interval_s
        if interval is None:
            return None
        return (ahead + 1) * interval * self.max_in_flight / self._slots(priority)

    def own_wait_s(self, priority: int, ahead: int) -> float | None:
        """The wait at the class's own rate: the class's waiters ahead (plus this one), per slot it
        may hold, each as long as its requests' mean time in flight, plus the margin for spread."""
        if not self._own_rate_known(priority):
            return None
        durations = self._class_durations[priority]
        own_ahead = min(ahead, len(self._classes[priority]))  # of those ahead, the class's own
        rounds = (own_ahead + 1) / self._slots(priority)  # requests each of the class's slots runs first
        mean = sum(durations) / len(durations)
        spread = math.sqrt(sum((d - mean) ** 2 for d in durations) / (len(durations) - 1))
        return rounds * mean + LATE_MARGIN_SPREADS * math.sqrt(rounds) * spread

    def _late(self, waiter: Waiter, ahead: int, now: float) -> bool:
        priority = waiter.priority
        if not self._own_rate_known(priority) and len(self._classes[priority]) >= self._slots(priority):
            return True  # the class's rate is not known yet: one round of its slots waits, no more
        wait_s = self.expected_wait_s(priority, ahead)
        return wait_s is not None and now + wait_s > waiter.deadline

    def _own_rate_known(self, priority: int) -> bool:
        return len(self._class_durations[priority]) >= OWN_RATE_SAMPLES

    def _slots(self, priority: int) -> int:
        """The slots the class may hold at once (its cap, else all of them)."""
        cap = self.class_caps[priority]
        return self.max_in_flight if cap is None else max(1, min(cap, self.max_in_flight))

    def finish(self, waiter: Waiter, actual_cost: int, now: float | None = None) -> None:
        """A started request ended: its slot frees and its attained service is settled; with
        ``now``, a release while requests wait also updates the measured release interval."""
        if now is not None:
            self._measure_release(now)
            if waiter.started_at is not None:
                self._class_durations[waiter.priority].append(max(0.0, now - waiter.started_at))
        self.in_flight -= 1
        self.in_flight_by_class[waiter.priority] -= 1
        self.attained[waiter.tenant] = self.attained.get(waiter.tenant, 0.0) + actual_cost - waiter.cost

    def next_ready(self, now: float) -> tuple[list[Waiter], list[Waiter]]:
        """Waiters to start now (free slots, best first) and waiters dropped past their deadline."""
        started: list[Waiter] = []
        expired = self.expire(now)
        while self.in_flight < self.max_in_flight:
            waiter = self._best()
            if waiter is None:
                break
            self.remove(waiter)
            self._start(waiter, now)
            started.append(waiter)
        return started, expired

    def expire(self, now: float) -> list[Waiter]:
        gone = [w for c in self._classes for q in c.by_tenant.values() for w in q if w.deadline <= now]
        for waiter in gone:
            self.remove(waiter)
        return gone

    def remove(self, waiter: Waiter) -> bool:
        queue = self._classes[waiter.priority].by_tenant.get(waiter.tenant)
        if queue is None or waiter not in queue:
            return False
        queue.remove(waiter)
        if not queue:
            del self._classes[waiter.priority].by_tenant[waiter.tenant]
        return True

    def _measure_release(self, now: float) -> None:
        if not self.waiting:  # slots may sit idle until the next release: not the service rate
            self._last_saturated_release = None
            return
        if self._last_saturated_release is not None:
            self._release_intervals.append(max(0.0, now - self._last_saturated_release))
        self._last_saturated_release = now

    def _start(self, waiter: Waiter, now: float | None) -> None:
        waiter.started = True
        waiter.started_at = now
        self.in_flight += 1
        self.in_flight_by_class[waiter.priority] += 1
        self.attained[waiter.tenant] = self.attained.get(waiter.tenant, 0.0) + waiter.cost

    def _enqueue(self, waiter: Waiter) -> None:
        group = self._classes[waiter.priority].by_tenant
        if waiter.tenant not in group and group:
            floor = min(self.attained.get(t, 0.0) for t in group)
            self.attained[waiter.tenant] = max(self.attained.get(waiter.tenant, 0.0), floor)
        group.setdefault(waiter.tenant, deque()).append(waiter)

    def _can_start(self, priority: int) -> bool:
        cap = self.class_caps[priority]
        contended = self.contended_caps[priority]
        if contended is not None and self._higher_active(priority):
            cap = contended if cap is None else min(cap, contended)
        return self.in_flight < self.max_in_flight and (cap is None or self.in_flight_by_class[priority] < cap)

    def _higher_active(self, priority: int) -> bool:
        return any(self.in_flight_by_class[p] or self._classes[p].by_tenant for p in range(priority))

    def _best(self) -> Waiter | None:
        for priority, klass in enumerate(self._classes):
            if klass.by_tenant and self._can_start(priority):
                tenant = min(klass.by_tenant, key=lambda t: (self.attained.get(t, 0.0), klass.by_tenant[t][0].seq))
                return klass.by_tenant[tenant][0]
        return None

    def _shed_candidate(self) -> Waiter | None:
        for klass in reversed(self._classes):
            if klass.by_tenant:
                tenant = max(klass.by_tenant, key=lambda t: (self.attained.get(t, 0.0), klass.by_tenant[t][-1].seq))
                return klass.by_tenant[tenant][-1]
        return None


def effective_priority(assigned: int, requested: int | None) -> int:
    """A request's class: its key's, or a lower one it asks for (a header), never a higher one."""
    return assigned if requested is None else max(assigned, requested)
