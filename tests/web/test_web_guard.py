"""The web app's building blocks on their own: the rate limiter and its setting."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from newsletter.config import InvalidLimit, parse_limit
from newsletter.context import Context
from newsletter.models import Throttle
from newsletter.web.guard import RateLimiter, SharedLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10/10m", (10, 600.0)), ("3/1h", (3, 3600.0)), ("5/s", (5, 1.0)), (" 2 / 1d ", (2, 86400.0))],
)
def test_parse_limit(text: str, expected: tuple[int, float]) -> None:
    assert parse_limit(text) == expected


@pytest.mark.parametrize("text", ["", "10", "10/", "ten/1m", "0/1m", "5/0m", "5/1y", "-1/1m"])
def test_parse_limit_refuses_nonsense(text: str) -> None:
    with pytest.raises(InvalidLimit):
        parse_limit(text)


def test_sliding_window_per_key() -> None:
    clock = FakeClock()
    limiter = RateLimiter(limit=3, period=60, clock=clock)
    assert [limiter.hit("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.hit("b")  # keys are independent
    clock.now += 30
    assert not limiter.hit("a")  # refused hits are not counted, but the window still holds
    clock.now += 30.001
    assert [limiter.hit("a") for _ in range(4)] == [True, True, True, False]


def test_memory_stays_bounded_under_key_spraying() -> None:
    clock = FakeClock()
    limiter = RateLimiter(limit=1, period=60, max_keys=100, clock=clock)
    for i in range(1000):
        clock.now += 0.001
        assert limiter.hit(f"k{i}")
    assert len(limiter._hits) <= 100


def test_thread_safe_counting() -> None:
    limiter = RateLimiter(limit=500, period=3600)
    allowed: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(100):
            ok = limiter.hit("shared")
            with lock:
                allowed.append(ok)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert allowed.count(True) == 500 and allowed.count(False) == 300


def test_shared_limiter_counts_for_every_process_on_the_database(ctx: Context) -> None:
    """Two limiters on one database (two processes): one count, refusals not counted."""
    clock = FakeClock()
    a = SharedLimiter(ctx.db, "ip", limit=3, period=60, clock=clock)
    b = SharedLimiter(ctx.db, "ip", limit=3, period=60, clock=clock)
    assert [a.hit("ip:1"), b.hit("ip:1"), a.hit("ip:1")] == [True, True, True]
    assert b.hit("ip:1") is False and a.hit("ip:1") is False  # full, whoever asks
    assert a.hit("ip:2") is True  # another key has its own window
    other = SharedLimiter(ctx.db, "address", limit=3, period=60, clock=clock)
    assert other.hit("ip:1") is True  # another limiter's keys are its own
    clock.now += 61
    assert b.hit("ip:1") is True  # the window has passed: a fresh one
    with ctx.db.read() as session:
        hits = session.scalar(select(Throttle.hits).where(Throttle.key == "ip|ip:1"))
    assert hits == 1


def test_shared_limiter_inside_the_callers_transaction(ctx: Context) -> None:
    limiter = SharedLimiter(ctx.db, "address", limit=1, period=60)
    with ctx.db.write() as session:  # no second transaction, no wait on our own lock
        assert limiter.hit("addr:x@example.com", session) is True
        assert limiter.hit("addr:x@example.com", session) is False
