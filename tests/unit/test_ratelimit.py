"""Per-client token buckets (serve_app.core.ratelimit) on a fake clock."""

from __future__ import annotations

import pytest

from serve_app.core.ratelimit import KeyedRateLimiter, TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_bucket_refills_continuously_up_to_capacity() -> None:
    bucket = TokenBucket.per_minute(60, now=0.0)
    bucket.take(60)
    bucket.refill(10.0)
    assert bucket.level == pytest.approx(10.0)
    bucket.refill(1000.0)
    assert bucket.level == 60.0


def test_requests_burst_to_the_limit_then_wait_for_refill(clock: FakeClock) -> None:
    limiter = KeyedRateLimiter(requests_per_minute=3, tokens_per_minute=None, clock=clock)
    assert [limiter.check("a").allowed for _ in range(3)] == [True, True, True]
    refused = limiter.check("a")
    assert not refused.allowed and refused.reason == "requests"
    assert refused.retry_after_s == 20  # one request refills every 60/3 s
    clock.now += 19.5
    assert not limiter.check("a").allowed
    clock.now += 0.5
    assert limiter.check("a").allowed


def test_retry_after_is_enough_to_pass(clock: FakeClock) -> None:
    limiter = KeyedRateLimiter(requests_per_minute=7, tokens_per_minute=1000, clock=clock)
    for _ in range(7):
        limiter.check("a", 10)
    refused = limiter.check("a", 10)
    assert refused.retry_after_s is not None
    clock.now += refused.retry_after_s
    assert limiter.check("a", 10).allowed


def test_token_limit_refuses_by_estimated_tokens(clock: FakeClock) -> None:
    limiter = KeyedRateLimiter(requests_per_minute=None, tokens_per_minute=600, clock=clock)
    assert limiter.check("a", 500).allowed
    refused = limiter.check("a", 200)
    assert (refused.allowed, refused.reason) == (False, "tokens")
    assert refused.retry_after_s == 10  # 100 tokens missing at 10 tokens/s
    assert limiter.check("a", 100).allowed  # a smaller request fits now


def test_a_refused_request_costs_nothing(clock: FakeClock) -> None:
    limiter = KeyedRateLimiter(requests_per_minute=2, tokens_per_minute=100, clock=clock)
    assert limiter.check("a", 90).allowed
    assert not limiter.check("a", 50).allowed  # refused on tokens: its request slot is not taken
    assert limiter.check("a", 10).allowed  # the second request slot is still there
    assert limiter.check("a", 0).reason == "requests"


def test_the_longer_wait_of_both_limits_is_reported(clock: FakeClock) -> None:
    limiter = KeyedRateLimiter(requests_per_minute=2, tokens_per_minute=6000, clock=clock)
    assert limiter.check("a", 6000).allowed
    assert limiter.check("a", 0).allowed
    clock.now += 10  # a third of a request and 1000 tokens are back
    tokens_bound = limiter.check("a", 4000)
    assert (tokens_bound.retry_after_s, tokens_bound.reason) == (30, "tokens")
    requests_bound = limiter.check("a", 2000)
    assert (requests_bound.retry_after_s, requests_bound.reason) == (20, "requests")


def test_more_than_a_minute_of_tokens_can_never_pass(clock: FakeClock) -> None:
    limiter = KeyedRateLimiter(requests_per_minute=None, tokens_per_minute=100, clock=clock)
    refused = limiter.check("a", 101)
    assert (refused.allowed, refused.retry_after_s, refused.reason) == (False, None, "too_large")
    assert limiter.check("a", 100).allowed  # and it cost nothing


def test_clients_are_isolated(clock: FakeClock) -> None:
    limiter = KeyedRateLimiter(requests_per_minute=1, tokens_per_minute=None, clock=clock)
    assert limiter.check("a").allowed
    assert not limiter.check("a").allowed
    assert limiter.check("b").allowed


def test_least_recently_seen_clients_are_forgotten(clock: FakeClock) -> None:
    limiter = KeyedRateLimiter(requests_per_minute=1, tokens_per_minute=None, clock=clock, max_clients=2)
    limiter.check("a")
    limiter.check("b")
    limiter.check("a")  # refused, but "a" is now the most recent
    limiter.check("c")  # evicts "b"
    assert limiter.tracked_clients == 2
    assert not limiter.check("a").allowed  # "a" was kept: still limited


def test_a_limiter_needs_a_limit() -> None:
    with pytest.raises(ValueError):
        KeyedRateLimiter(None, None)
