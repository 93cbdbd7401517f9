"""Exact behaviour of the send-rate limits (delivery.ratelimit) with injected clocks.

``SharedRate`` runs against the test's real database (its ``rate_windows`` row);
the clock is a plain number the test moves, and ``Waits`` is a real
``threading.Event`` that records each timeout it is asked to wait and moves that
clock on by it instead of sleeping, so every grant and every wait is an exact value.
Rates are chosen so the microsecond arithmetic is exact in binary floating point
(64/s: one message every 15 625 µs, a burst of 4, asked for 2 at a time).
"""

from __future__ import annotations

import threading
import time

import pytest

from newsletter.context import Context
from newsletter.delivery.ratelimit import SharedRate, TokenBucket, bucket_for, limiter_for
from newsletter.models import RateWindow

T = 1024.0  # the injected wall clock's start (seconds)
T_US = 1_024_000_000


class Runaway(AssertionError):
    """A wait loop that would never end (fail at once instead of hanging the test)."""


class Clock:
    def __init__(self, now: float = T) -> None:
        self.now = now
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        if self.reads > 1000:
            raise Runaway("the clock was read 1000 times: a wait loop that never ends")
        return self.now


class Waits(threading.Event):
    """An Event that records each wait's timeout and advances ``clock`` by it."""

    def __init__(self, clock: Clock, cancelled: bool = False) -> None:
        super().__init__()
        self.clock = clock
        self.asked: list[float | None] = []
        if cancelled:
            self.set()

    def wait(self, timeout: float | None = None) -> bool:
        self.asked.append(timeout)
        if timeout is None:
            raise Runaway("wait() without a timeout would block for ever")
        if len(self.asked) > 100:
            raise Runaway("more than 100 waits")
        self.clock.now += timeout
        return self.is_set()


def window(ctx: Context, name: str = "send") -> tuple[int, int]:
    """The row's (tat_us, granted)."""
    with ctx.db.read() as session:
        row = session.get(RateWindow, name)
        assert row is not None
        return row.tat_us, row.granted


# --- SharedRate ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "interval_us", "burst", "chunk"),
    [
        (1, 1_000_000, 2, 1),
        (10, 100_000, 2, 1),
        (64, 15_625, 4, 2),
        (100, 10_000, 5, 2),
        (1000, 1000, 50, 25),
        (2_000_000, 1, 100_000, 50_000),
    ],
)
def test_shared_rate_sizes_its_interval_burst_and_chunk(
    ctx: Context, rate: float, interval_us: int, burst: int, chunk: int
) -> None:
    limiter = SharedRate(ctx.db, rate)
    assert (limiter.interval_us, limiter.burst, limiter.chunk) == (interval_us, burst, chunk)
    assert limiter.name == "send"


@pytest.mark.parametrize("rate", [0, -1, -0.5])
def test_shared_rate_refuses_a_rate_that_is_not_positive(ctx: Context, rate: float) -> None:
    with pytest.raises(ValueError) as caught:
        SharedRate(ctx.db, rate)
    assert str(caught.value) == "rate must be positive (0 means unlimited: use no limiter)"


def test_shared_rate_below_one_per_second_is_allowed(ctx: Context) -> None:
    assert SharedRate(ctx.db, 1).interval_us == 1_000_000
    assert SharedRate(ctx.db, 0.5).interval_us == 2_000_000


def test_shared_rate_grants_the_burst_then_one_per_interval(ctx: Context) -> None:
    clock = Clock()
    waits = Waits(clock)
    limiter = SharedRate(ctx.db, 64, clock=clock)
    assert limiter.acquire(waits) is True  # the row is created with the first share (2)
    assert window(ctx) == (T_US + 31_250, 2)
    assert limiter.acquire(waits) is True  # the second token of that share: no row trip
    assert window(ctx) == (T_US + 31_250, 2)
    assert limiter.acquire(waits) is True  # room for 2 more within the burst
    assert window(ctx) == (T_US + 62_500, 2)
    assert limiter.acquire(waits) is True
    assert window(ctx) == (T_US + 62_500, 2)
    assert waits.asked == []  # four at once: the burst
    assert limiter.acquire(waits) is True  # the fifth waits one interval for one token
    assert waits.asked == [0.015625]
    assert clock.now == T + 0.015625
    assert window(ctx) == (T_US + 78_125, 1)


def test_shared_rate_uses_every_token_of_a_share_before_asking_again(ctx: Context) -> None:
    clock = Clock()
    waits = Waits(clock)
    limiter = SharedRate(ctx.db, 1000, clock=clock)  # shares of 25, a burst of 50
    for _ in range(25):
        assert limiter.acquire(waits) is True
    assert window(ctx) == (T_US + 25_000, 25)
    assert limiter.acquire(waits) is True  # the 26th takes the next share
    assert window(ctx) == (T_US + 50_000, 25)
    assert waits.asked == []


def test_shared_rate_drops_tokens_not_spent_within_the_burst_time(ctx: Context) -> None:
    clock = Clock()
    limiter = SharedRate(ctx.db, 64, clock=clock)
    assert limiter.acquire() is True  # a share of 2: one token left, valid for 1/16 s
    clock.now = T + 4 / 64  # exactly the end of that time: the token is gone
    assert limiter.acquire() is True
    # a new share from "now" (the old due time has passed): 2 more intervals
    assert window(ctx) == (T_US + 62_500 + 31_250, 2)


def test_shared_rate_never_grants_a_fraction_of_a_message(ctx: Context) -> None:
    clock = Clock()
    waits = Waits(clock)
    limiter = SharedRate(ctx.db, 100, clock=clock)  # a burst of 5, shares of 2
    for _ in range(5):
        assert limiter.acquire(waits) is True
    assert window(ctx) == (T_US + 50_000, 1)
    clock.now = T + 0.015625  # 1.5625 intervals of room: one whole message
    assert limiter.acquire(waits) is True
    assert window(ctx) == (T_US + 60_000, 1)
    assert waits.asked == []


def test_shared_rate_a_sender_whose_clock_is_behind_leaves_the_window_alone(
    ctx: Context,
) -> None:
    ahead = Clock(T + 1.0)
    first = SharedRate(ctx.db, 64, clock=ahead)
    for _ in range(4):
        assert first.acquire() is True
    assert window(ctx) == (T_US + 1_000_000 + 62_500, 2)
    behind = Clock(T)
    cancelled = Waits(behind, cancelled=True)
    second = SharedRate(ctx.db, 64, clock=behind)
    assert second.acquire(cancelled) is False  # nothing fits: it waits, and is cancelled
    assert cancelled.asked == [1.0]  # waits are capped at a second
    assert window(ctx) == (T_US + 1_000_000 + 62_500, 0)  # the due time did not move back


def test_shared_rate_waits_in_steps_of_at_most_a_second(ctx: Context) -> None:
    clock = Clock()
    waits = Waits(clock)
    limiter = SharedRate(ctx.db, 0.25, clock=clock)  # one message every 4 s, burst 2
    assert limiter.acquire(waits) is True
    assert limiter.acquire(waits) is True
    assert window(ctx) == (T_US + 8_000_000, 1)
    assert limiter.acquire(waits) is True  # due 4 s later: four waits of one second
    assert waits.asked == [1.0, 1.0, 1.0, 1.0]
    assert window(ctx) == (T_US + 12_000_000, 1)


def test_shared_rate_a_single_token_share_is_a_grant(ctx: Context) -> None:
    clock = Clock()
    cancelled = Waits(clock, cancelled=True)
    limiter = SharedRate(ctx.db, 1, clock=clock)  # shares of one
    assert limiter.acquire(cancelled) is True
    assert cancelled.asked == []
    assert window(ctx) == (T_US + 1_000_000, 1)


def test_shared_rate_names_its_row(ctx: Context) -> None:
    clock = Clock()
    SharedRate(ctx.db, 64, name="digest", clock=clock).acquire()
    SharedRate(ctx.db, 64, clock=clock).acquire()
    assert window(ctx, "digest") == (T_US + 31_250, 2)
    assert window(ctx, "send") == (T_US + 31_250, 2)


def test_shared_rate_without_an_event_sleeps_until_its_share(ctx: Context) -> None:
    start = time.time()
    later = 0.25
    other = SharedRate(ctx.db, 64, clock=lambda: start + later)  # a sender ahead of us
    for _ in range(4):
        assert other.acquire() is True
    limiter = SharedRate(ctx.db, 64)  # the real wall clock
    assert limiter.acquire() is True
    # its one message fits only once the clock reaches the other's window (+1 interval)
    assert time.time() >= start + later + 0.015625 - 0.000_01


# --- TokenBucket ----------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0, -2])
def test_token_bucket_refuses_a_rate_that_is_not_positive(rate: float) -> None:
    with pytest.raises(ValueError) as caught:
        TokenBucket(rate)
    assert str(caught.value) == "rate must be positive (0 means unlimited: use no bucket)"


@pytest.mark.parametrize(
    ("rate", "burst", "capacity"),
    [(5, None, 1.0), (100, None, 10.0), (1000, None, 100.0), (10, 3, 3.0), (10, 0.5, 1.0)],
)
def test_token_bucket_capacity(rate: float, burst: float | None, capacity: float) -> None:
    assert TokenBucket(rate, burst).capacity == capacity


def test_token_bucket_reserve_starts_with_one_token_and_caps_idle_credit() -> None:
    clock = Clock(0.0)
    bucket = TokenBucket(100, clock=clock)
    assert bucket.reserve() == 0.0  # one token to start with, no more
    assert bucket.reserve() == 0.01
    assert bucket.reserve() == 0.02
    clock.now = 100.0  # a long idle: credit up to the burst (10), not 10 000
    assert [bucket.reserve() for _ in range(10)] == [0.0] * 10
    assert bucket.reserve() == pytest.approx(0.01)


def test_token_bucket_a_named_burst_is_used() -> None:
    clock = Clock(0.0)
    bucket = TokenBucket(10, burst=3, clock=clock)
    clock.now = 60.0
    assert [bucket.reserve() for _ in range(4)] == [0.0, 0.0, 0.0, 0.1]


def test_token_bucket_small_rate_keeps_a_burst_of_one() -> None:
    clock = Clock(0.0)
    bucket = TokenBucket(5, clock=clock)
    clock.now = 60.0
    assert [bucket.reserve() for _ in range(2)] == [0.0, 0.2]


def test_token_bucket_acquire_sleeps_only_when_it_must() -> None:
    clock = Clock(0.0)
    slept: list[float] = []
    bucket = TokenBucket(100, clock=clock, sleep=slept.append)
    assert bucket.acquire() is True
    assert slept == []
    assert bucket.acquire() is True
    assert slept == [0.01]


def test_token_bucket_acquire_waits_on_the_event() -> None:
    clock = Clock(0.0)
    bucket = TokenBucket(100, clock=clock, sleep=lambda seconds: None)
    waits = Waits(clock)
    assert bucket.acquire(waits) is True  # a token at once: no wait at all
    assert bucket.acquire(waits) is True
    assert waits.asked == [0.01]
    cancelled = Waits(clock, cancelled=True)
    assert bucket.acquire(cancelled) is False
    assert cancelled.asked == [pytest.approx(0.01)]


def test_bucket_for_a_rate() -> None:
    assert bucket_for(0) is None
    assert bucket_for(-1) is None
    half = bucket_for(0.5)
    assert half is not None and half.rate == 0.5
    three = bucket_for(3)
    assert three is not None and three.rate == 3 and three.capacity == 1.0


def test_limiter_for_a_rate(ctx: Context) -> None:
    assert limiter_for(ctx.db, 0) is None
    assert limiter_for(ctx.db, -3) is None
    for rate in (0.5, 1, 80):
        limiter = limiter_for(ctx.db, rate)
        assert limiter is not None and limiter.rate == rate and limiter.db is ctx.db
