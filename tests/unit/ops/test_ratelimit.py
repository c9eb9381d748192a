"""backend/ops/ratelimit.py: a token bucket per client, on an injected clock."""

import pytest

from backend.ops.ratelimit import RateLimiter


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_rate_limiter_allows_a_burst_of_one_minute(clock):
    limiter = RateLimiter(3, clock=clock)
    assert [limiter.allow("a") for _ in range(3)] == [0.0, 0.0, 0.0]


def test_rate_limiter_refuses_past_the_burst_with_the_wait(clock):
    limiter = RateLimiter(3, clock=clock)
    for _ in range(3):
        limiter.allow("a")
    assert limiter.allow("a") == pytest.approx(20.0)  # 3 a minute: one token every 20 s


def test_rate_limiter_wait_shrinks_as_time_passes(clock):
    limiter = RateLimiter(3, clock=clock)
    for _ in range(3):
        limiter.allow("a")
    clock.now += 15
    assert limiter.allow("a") == pytest.approx(5.0)


def test_rate_limiter_refills_continuously(clock):
    limiter = RateLimiter(60, clock=clock)  # one token a second: binary-exact arithmetic below
    for _ in range(60):
        limiter.allow("a")
    clock.now += 0.5
    assert limiter.allow("a") == 0.5
    clock.now += 0.5
    assert limiter.allow("a") == 0.0
    assert limiter.allow("a") == 1.0


def test_rate_limiter_refused_calls_cost_nothing(clock):
    limiter = RateLimiter(60, clock=clock)
    for _ in range(60):
        limiter.allow("a")
    for _ in range(100):
        assert limiter.allow("a") > 0
    clock.now += 1
    assert limiter.allow("a") == 0.0


def test_rate_limiter_burst_is_capped_after_a_long_idle(clock):
    limiter = RateLimiter(2, clock=clock)
    limiter.allow("a")
    clock.now += 3600
    assert [limiter.allow("a") == 0.0 for _ in range(3)] == [True, True, False]


def test_rate_limiter_clients_are_independent(clock):
    limiter = RateLimiter(1, clock=clock)
    assert limiter.allow("key:aaaa") == 0.0
    assert limiter.allow("key:aaaa") == pytest.approx(60.0)
    assert limiter.allow("key:bbbb") == 0.0
    assert limiter.allow("local:127.0.0.1") == 0.0


def test_rate_limiter_zero_is_off(clock):
    limiter = RateLimiter(0, clock=clock)
    assert {limiter.allow("a") for _ in range(1000)} == {0.0}
    assert limiter.buckets == {}


def test_rate_limiter_uses_a_monotonic_clock_by_default():
    import time

    assert RateLimiter(1).clock is time.monotonic
