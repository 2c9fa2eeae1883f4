"""The priority admission queue (serve_app.core.flow_queue): classes, fair share, shedding, deadlines."""

from __future__ import annotations

import math

import pytest

from serve_app.core.flow_queue import OWN_RATE_SAMPLES, FlowQueue, Waiter

INTERACTIVE, BATCH = 0, 1


def w(tenant: str, priority: int = INTERACTIVE, cost: int = 10, deadline: float = 100.0) -> Waiter:
    return Waiter(tenant, priority, cost, deadline)


def test_starts_at_once_while_there_is_room() -> None:
    queue = FlowQueue(max_in_flight=2, max_waiting=4)
    assert queue.arrive(w("a")).outcome == "started"
    assert queue.arrive(w("a")).outcome == "started"
    assert queue.arrive(w("a")).outcome == "queued"


def test_higher_class_first_then_least_attained_service() -> None:
    queue = FlowQueue(max_in_flight=1, max_waiting=10)
    running = w("flood", cost=1000)
    queue.arrive(running)
    flood = [w("flood", BATCH) for _ in range(3)]
    for waiter in flood:
        queue.arrive(waiter)
    late_interactive = w("b")
    queue.arrive(late_interactive)
    queue.finish(running, 1000)
    started, _ = queue.next_ready(now=1.0)
    assert started == [late_interactive]


def test_fair_share_within_a_class() -> None:
    queue = FlowQueue(max_in_flight=1, max_waiting=10)
    first = w("a")
    queue.arrive(first)
    a_waiters = [w("a") for _ in range(3)]
    for waiter in a_waiters:
        queue.arrive(waiter)
    b_waiter = w("b")
    queue.arrive(b_waiter)
    order = []
    current = first
    for _ in range(4):
        queue.finish(current, current.cost)
        (current,), _ = queue.next_ready(1.0)
        order.append(current.tenant)
    # b (joins at a's level) alternates with a instead of waiting behind all of a's backlog
    assert order[:2].count("b") == 1 or order[1] == "b"
    assert order.index("b") <= 1


def test_full_queue_sheds_the_lowest_class_first() -> None:
    queue = FlowQueue(max_in_flight=1, max_waiting=2)
    queue.arrive(w("x"))
    batch = [w("flood", BATCH), w("flood", BATCH)]
    for waiter in batch:
        queue.arrive(waiter)
    arrival = queue.arrive(w("b"))
    assert arrival.outcome == "queued" and arrival.shed == (batch[1],)  # the newest batch waiter
    assert queue.arrive(w("flood", BATCH)).outcome == "refused"  # batch never sheds interactive
    assert queue.arrive(w("c")).outcome == "queued"  # sheds the last batch waiter
    assert queue.arrive(w("d")).outcome == "refused"  # all interactive now: an equal class is refused


def test_past_the_deadline_a_waiter_is_dropped_not_started() -> None:
    queue = FlowQueue(max_in_flight=1, max_waiting=4)
    running = w("x")
    queue.arrive(running)
    late, ontime = w("a", deadline=5.0), w("b", deadline=50.0)
    queue.arrive(late)
    queue.arrive(ontime)
    queue.finish(running, 10)
    started, expired = queue.next_ready(now=6.0)
    assert started == [ontime] and expired == [late] and not late.started


def test_settlement_corrects_attained_service() -> None:
    queue = FlowQueue(max_in_flight=1, max_waiting=4)
    waiter = w("a", cost=500)
    queue.arrive(waiter)
    queue.finish(waiter, 20)
    assert queue.attained["a"] == 20 and queue.in_flight == 0


def test_a_header_may_lower_the_class_never_raise_it() -> None:
    from serve_app.core.flow_queue import effective_priority

    assert effective_priority(INTERACTIVE, BATCH) == BATCH
    assert effective_priority(BATCH, INTERACTIVE) == BATCH
    assert effective_priority(BATCH, None) == BATCH


def test_a_class_cap_keeps_slots_free_for_a_higher_class() -> None:
    queue = FlowQueue(max_in_flight=3, max_waiting=10, class_caps=(None, 1))
    first, second = w("flood", BATCH), w("flood", BATCH)
    assert queue.arrive(first).outcome == "started"
    assert queue.arrive(second).outcome == "queued"  # batch holds its one slot
    assert queue.arrive(w("b")).outcome == "started"  # interactive starts past the batch waiter
    assert queue.next_ready(1.0) == ([], [])  # the batch waiter still may not start
    queue.finish(first, 10)
    assert queue.next_ready(1.0)[0] == [second]


def test_a_contended_cap_holds_only_while_a_higher_class_is_active() -> None:
    queue = FlowQueue(max_in_flight=4, max_waiting=10, class_caps=(None, 2), contended_caps=(None, 0))
    first = w("flood", BATCH)
    assert queue.arrive(first).outcome == "started"  # no interactive traffic: up to its own cap
    b = w("b")
    assert queue.arrive(b).outcome == "started"
    late = w("flood", BATCH)
    assert queue.arrive(late).outcome == "queued"  # a free slot, but interactive is in flight
    queue.finish(first, 10)
    assert queue.next_ready(1.0) == ([], [])  # still yielding: b is in flight
    queue.finish(b, 10)
    assert queue.next_ready(1.0)[0] == [late]  # b is gone: batch starts again


def test_a_contended_cap_also_holds_while_a_higher_class_waits() -> None:
    queue = FlowQueue(max_in_flight=4, max_waiting=10, class_caps=(2, None), contended_caps=(None, 1))
    running = [w("b"), w("b")]
    for waiter in running:
        queue.arrive(waiter)
    waiting_b, batch, more = w("b"), w("flood", BATCH), w("flood", BATCH)
    assert queue.arrive(waiting_b).outcome == "queued"  # interactive at its own cap
    assert queue.arrive(batch).outcome == "queued"
    assert queue.arrive(more).outcome == "queued"
    assert queue.next_ready(1.0)[0] == [batch]  # one batch while interactive waits, not two
    queue.finish(running[0], 10)
    assert queue.next_ready(1.0)[0] == [waiting_b]  # the slot goes to interactive
    queue.finish(running[1], 10)
    queue.finish(waiting_b, 10)
    assert queue.next_ready(1.0)[0] == [more]  # no interactive left: batch may take more


def _saturate(queue: FlowQueue, interval_s: float, releases: int) -> float:
    """Keep one waiter queued while ``releases`` requests finish ``interval_s`` apart, each in flight
    ``max_in_flight`` intervals (a steady queue: the first ones started before 0); the time after."""
    now = 0.0
    running = [w("a") for _ in range(queue.max_in_flight)]
    for i, waiter in enumerate(running):
        queue.arrive(waiter, (i + 1 - queue.max_in_flight) * interval_s)
    queue.arrive(w("a", deadline=1e9), now)
    for _ in range(releases):
        now += interval_s
        queue.finish(running.pop(0), 10, now)
        started, _ = queue.next_ready(now)
        running += started
        queue.arrive(w("a", deadline=1e9), now)
    return now


def test_within_one_round_of_slots_no_late_refusal_before_a_rate_is_measured() -> None:
    queue = FlowQueue(max_in_flight=1, max_waiting=10)
    queue.arrive(w("a"), now=0.0)
    assert queue.expected_wait_s(INTERACTIVE, ahead=0) is None
    assert queue.arrive(w("a", deadline=0.001), now=0.0).outcome == "queued"


def test_an_arrival_that_would_wait_past_its_deadline_is_refused_at_once() -> None:
    queue = FlowQueue(max_in_flight=2, max_waiting=100)
    now = _saturate(queue, interval_s=0.5, releases=6)
    assert queue.release_interval_s == 0.5
    ahead = queue.waiting  # one waiter queued
    assert queue.expected_wait_s(INTERACTIVE, ahead) == (ahead + 1) * 0.5
    assert queue.arrive(w("b", deadline=now + 0.9), now).outcome == "late"
    assert queue.arrive(w("b", deadline=now + 1.1), now).outcome == "queued"


def test_idle_gaps_do_not_count_as_service_time() -> None:
    queue = FlowQueue(max_in_flight=1, max_waiting=10)
    first, second = w("a"), w("a")
    queue.arrive(first, 0.0)
    queue.finish(first, 10, 50.0)  # nothing waited: an idle slot, not the service rate
    queue.arrive(second, 60.0)
    queue.finish(second, 10, 100.0)
    assert queue.release_interval_s is None


def test_a_capped_class_waits_for_its_share_of_the_slots() -> None:
    queue = FlowQueue(max_in_flight=4, max_waiting=100, class_caps=(None, 2))
    _saturate(queue, interval_s=1.0, releases=4)
    interval = queue.release_interval_s
    assert interval is not None
    assert queue.expected_wait_s(BATCH, ahead=0) == 2 * queue.expected_wait_s(INTERACTIVE, ahead=0)


def test_a_class_served_slower_than_the_others_is_estimated_at_its_own_rate() -> None:
    """A batch pool of its own: interactive releases come every 0.1 s, and each batch request holds
    batch's one slot 2 s. At the queue's overall rate (and batch's cap of 1 in 4 slots) a batch
    arrival would look 0.8 s away; at batch's own, 4 s, past its 3 s deadline: refused at once
    instead of dropped then."""
    queue = FlowQueue(max_in_flight=4, max_waiting=100, class_caps=(None, 1))
    now = 0.0
    batch_running = w("a", priority=BATCH, deadline=1e9)
    queue.arrive(batch_running, now)
    queue.arrive(w("a", priority=BATCH, deadline=1e9), now)  # batch waits behind its cap of 1
    interactive = [w("b") for _ in range(3)]
    for waiter in interactive:
        queue.arrive(waiter, now)
    for step in range(1, 20 * OWN_RATE_SAMPLES + 1):
        now = step * 0.1
        queue.finish(interactive.pop(0), 10, now)
        interactive.append(w("b"))
        queue.arrive(interactive[-1], now)
        if step % 20 == 0:  # batch's one slot frees every 2 s
            queue.finish(batch_running, 10, now)
            started, _ = queue.next_ready(now)
            (batch_running,) = [s for s in started if s.priority == BATCH]
            queue.arrive(w("a", priority=BATCH, deadline=1e9), now)
    overall = queue.release_interval_s
    assert overall is not None and overall < 0.2
    assert queue.expected_wait_s(BATCH, ahead=1) == pytest.approx(4.0)
    assert queue.arrive(w("a", priority=BATCH, deadline=now + 3.0), now).outcome == "late"
    assert queue.arrive(w("a", priority=BATCH, deadline=now + 60.0), now).outcome == "queued"


def test_an_unmeasured_class_queues_one_round_of_its_slots_then_refuses_as_late() -> None:
    """A pool's first seconds: no batch request has ended, and the overall rate (measured on the
    interactive engine) says nothing of batch's. Two batch requests wait behind batch's 2 slots;
    a third is refused at once, not queued to wait out its deadline."""
    queue = FlowQueue(max_in_flight=4, max_waiting=64, class_caps=(None, 2))
    running = [w("a", priority=BATCH, deadline=1e9) for _ in range(2)]
    for waiter in running:
        assert queue.arrive(waiter, 0.0).outcome == "started"
    assert [queue.arrive(w("a", priority=BATCH, deadline=10.0), 0.1).outcome for _ in range(3)] == [
        "queued",
        "queued",
        "late",
    ]
    assert queue.arrive(w("b"), 0.1).outcome == "started"  # interactive is not held back by it


def _finish_batch_requests(queue: FlowQueue, seconds: list[float], now: float = 0.0) -> float:
    """Batch requests run one after another, each for the given seconds; the time after."""
    for duration in seconds:
        running = w("a", priority=BATCH, deadline=1e9)
        assert queue.arrive(running, now).outcome == "started"
        now += duration
        queue.finish(running, 10, now)
    return now


def test_a_class_rate_is_measured_from_its_requests_ends_once_there_are_enough() -> None:
    """No waiter needs to have been released: batch requests 3.4 s in flight over batch's 2 slots
    put each batch waiter 1.7 s apart, once OWN_RATE_SAMPLES of them have ended. Before that one
    round of the slots waits: a class's first requests ran faster than the ones after them."""
    queue = FlowQueue(max_in_flight=4, max_waiting=64, class_caps=(None, 2))
    now = _finish_batch_requests(queue, [3.4] * (OWN_RATE_SAMPLES - 1))
    assert queue.own_wait_s(BATCH, ahead=0) is None
    now = _finish_batch_requests(queue, [3.4], now)
    assert queue.release_interval_s is None  # nothing waited: no overall rate
    assert queue.expected_wait_s(BATCH, ahead=0) == pytest.approx(1.7)
    for _ in range(2):  # both slots busy
        queue.arrive(w("a", priority=BATCH, deadline=1e9), now)
    for _ in range(5):  # waiters ahead: 0, 1, ... 4 -> starts 1.7, 3.4, ... 8.5 s away
        assert queue.arrive(w("a", priority=BATCH, deadline=now + 10.0), now).outcome == "queued"
    assert queue.arrive(w("a", priority=BATCH, deadline=now + 10.0), now).outcome == "late"  # 10.2 s away


def test_a_class_whose_requests_vary_in_time_is_estimated_with_a_margin() -> None:
    """Batch requests alternately 1 s and 3 s in flight on batch's one slot: 2 s on average, a
    sample standard deviation of sqrt(8/7) s over 8. With 3 waiters ahead, 4 requests run first:
    8 s at the mean, and the wait is estimated at 8 + 2 x sqrt(4) x sqrt(8/7), about 12.3 s. A
    10 s deadline is refused at once, where at the mean it was queued, and dropped whenever the
    engine ran slower than average."""
    queue = FlowQueue(max_in_flight=4, max_waiting=64, class_caps=(None, 1))
    now = _finish_batch_requests(queue, [1.0, 3.0] * (OWN_RATE_SAMPLES // 2))
    queue.arrive(w("a", priority=BATCH, deadline=1e9), now)  # starts
    for _ in range(3):
        queue.arrive(w("a", priority=BATCH, deadline=1e9), now)
    assert queue.own_wait_s(BATCH, ahead=3) == pytest.approx(8 + 4 * math.sqrt(8 / 7))
    assert queue.arrive(w("a", priority=BATCH, deadline=now + 10.0), now).outcome == "late"
    assert queue.arrive(w("a", priority=BATCH, deadline=now + 13.0), now).outcome == "queued"


def test_a_class_whose_requests_take_the_same_time_gets_no_margin() -> None:
    queue = FlowQueue(max_in_flight=4, max_waiting=64, class_caps=(None, 2))
    now = _finish_batch_requests(queue, [2.0] * OWN_RATE_SAMPLES)
    for _ in range(5):  # 2 start, 3 wait
        queue.arrive(w("a", priority=BATCH, deadline=1e9), now)
    assert queue.own_wait_s(BATCH, ahead=3) == pytest.approx(4.0)  # 4 requests over 2 slots, 2 s each
