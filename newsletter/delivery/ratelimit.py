"""Send-rate limits: ``NEWSLETTER_SEND_RATE`` messages per second.

:class:`SharedRate` is the one the sender uses: it holds for the whole deployment,
every process on every machine taking its share from one database row.
:class:`TokenBucket` is the in-process version (one process's threads only),
implemented as a reservation clock rather than a polling loop: each caller takes the
next free slot under a lock and sleeps *outside* it until that slot comes, so N
worker threads share one exact rate with no busy-waiting and no thundering herd.
A small burst (a tenth of a second's worth, at least one message) absorbs
scheduling jitter without letting the long-run average drift above the limit.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import case, update

from ..models import RateWindow

if TYPE_CHECKING:
    from ..db import Database


class TokenBucket:
    """``acquire()`` blocks until sending one more message keeps us within ``rate``/s."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive (0 means unlimited: use no bucket)")
        self.rate = rate
        self.capacity = max(1.0, burst if burst is not None else rate / 10)
        self._clock = clock
        self._sleep = sleep
        self._tokens = 1.0  # start almost empty: no initial burst above the rate
        self._last = clock()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take one token; return how long the caller must wait before using it."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= 1.0
            return max(0.0, -self._tokens / self.rate)

    def acquire(self, cancelled: threading.Event | None = None) -> bool:
        """Wait for a token; False if ``cancelled`` was set while waiting."""
        wait = self.reserve()
        if wait <= 0:
            return True
        if cancelled is not None:
            return not cancelled.wait(wait)
        self._sleep(wait)
        return True


def bucket_for(rate: float) -> TokenBucket | None:
    """The bucket for a configured rate; ``None`` (no limit) for 0."""
    return TokenBucket(rate) if rate > 0 else None


class SharedRate:
    """``NEWSLETTER_SEND_RATE`` for the whole deployment, however many senders run.

    A generic cell rate algorithm (GCRA) in one row (``rate_windows``): it keeps the
    theoretical arrival time of the next message, and a sender asks for a share
    with one ``UPDATE … RETURNING`` that grants what fits before ``now + burst``
    and moves that time on by ``1/rate`` per message granted.  Over any window the
    deployment sends at most ``rate × window + burst`` messages, whatever the number
    of senders; a share not spent within the burst time is dropped, not banked.
    Times come from the wall clock, which machines keep in step with NTP.
    """

    def __init__(
        self,
        db: Database,
        rate: float,
        name: str = "send",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive (0 means unlimited: use no limiter)")
        self.db = db
        self.rate = rate
        self.name = name
        self.interval_us = max(1, round(1_000_000 / rate))
        self.burst = max(2, math.ceil(rate * 0.05))  # tokens: a twentieth of a second
        self.chunk = max(1, self.burst // 2)
        self._clock = clock
        # Nothing held yet: the first call asks the row (with the wall clock past 0.0,
        # any starting count would be ignored, so neither value can change behaviour).
        self._tokens = 0  # pragma: no mutate (equivalent: _valid_until 0.0 is already past)
        self._valid_until = 0.0  # pragma: no mutate (equivalent: unread while _tokens is 0)
        self._lock = threading.Lock()

    def acquire(self, cancelled: threading.Event | None = None) -> bool:
        """Wait for a token; False if ``cancelled`` was set while waiting."""
        with self._lock:  # one thread asks the database; the others wait their turn
            while True:
                now = self._clock()
                if self._tokens > 0 and now < self._valid_until:
                    self._tokens -= 1
                    return True
                got, tat_us = self._grant(now)
                if got > 0:
                    self._tokens = got - 1
                    self._valid_until = now + self.burst / self.rate
                    return True
                # The next share fits once the clock reaches tat - burst.
                due = (tat_us - (self.burst - 1) * self.interval_us) / 1_000_000
                wait = min(max(due - self._clock(), 0.0005), 1.0)
                if cancelled is not None:
                    if cancelled.wait(wait):
                        return False
                else:
                    time.sleep(wait)

    def _grant(self, now: float) -> tuple[int, int]:
        """Ask the row for up to ``chunk`` tokens: (how many we got, the new due time)."""
        now_us = int(now * 1_000_000)
        w = RateWindow.__table__.c
        base = case((w.tat_us > now_us, w.tat_us), else_=now_us)
        room = (now_us + self.burst * self.interval_us - base) // self.interval_us
        share = case((room <= 0, 0), (room < self.chunk, room), else_=self.chunk)
        statement = (
            update(RateWindow)
            .where(w.name == self.name)
            .values(granted=share, tat_us=base + share * self.interval_us)
            .returning(w.granted, w.tat_us)
        )
        with self.db.write() as session:
            row = session.execute(statement).first()
            if row is None:
                first = min(self.chunk, self.burst)
                tat_us = now_us + first * self.interval_us
                session.add(RateWindow(name=self.name, tat_us=tat_us, granted=first))
                return first, tat_us
        return int(row[0]), int(row[1])


def limiter_for(db: Database, rate: float) -> SharedRate | None:
    """The deployment-wide limiter for a configured rate; ``None`` (no limit) for 0."""
    return SharedRate(db, rate) if rate > 0 else None
