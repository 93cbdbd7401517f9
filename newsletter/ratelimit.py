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

from .models import RateWindow

if TYPE_CHECKING:
    from .db import Database


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
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

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


SLOT_SECONDS = 0.1  # the shared rate is granted per tenth of a second


def slot_capacity(rate: float, slot: int) -> int:
    """Messages allowed in time slot ``slot``: exactly ``rate`` per second in the long run.

    Slots get ``floor(rate·t)`` at their end minus at their start, so a fractional
    rate (2.5/s: 0, 1, 0, 0, 1, … per tenth) never rounds up.
    """
    per_slot = rate * SLOT_SECONDS
    return int((slot + 1) * per_slot + 1e-9) - int(slot * per_slot + 1e-9)


class SharedRate:
    """``NEWSLETTER_SEND_RATE`` for the whole deployment, however many senders run.

    One row (``rate_windows``) counts the messages granted in the current tenth of a
    second; each sender asks it for a share with one ``UPDATE … RETURNING`` and
    spends that share before the slot ends (unused tokens die with their slot, so
    the sum over all senders never exceeds the slot's capacity).  Slots come from the
    wall clock, which machines keep in step with NTP; a machine whose clock lags
    gets nothing until its slot is the newest (it can starve, never over-send).
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
        self.chunk = max(1, math.ceil(rate * SLOT_SECONDS / 4))  # a quarter slot per ask
        self._clock = clock
        self._slot = -1
        self._tokens = 0
        self._lock = threading.Lock()

    def acquire(self, cancelled: threading.Event | None = None) -> bool:
        """Wait for a token; False if ``cancelled`` was set while waiting."""
        with self._lock:  # one thread asks the database; the others wait their turn
            while True:
                now = self._clock()
                slot = int(now / SLOT_SECONDS)
                if self._slot == slot and self._tokens > 0:
                    self._tokens -= 1
                    return True
                got = self._grant(slot)
                if got > 0:
                    self._slot, self._tokens = slot, got - 1
                    return True
                wait = (slot + 1) * SLOT_SECONDS - self._clock() + 0.0005
                if cancelled is not None:
                    if cancelled.wait(max(wait, 0.0)):
                        return False
                elif wait > 0:
                    time.sleep(wait)

    def _grant(self, slot: int) -> int:
        """Ask the row for ``chunk`` tokens of ``slot``; how many we got (maybe 0)."""
        cap = slot_capacity(self.rate, slot)
        if cap <= 0:
            return 0
        fresh = min(self.chunk, cap)
        w = RateWindow.__table__.c
        same = w.slot == slot
        statement = (
            update(RateWindow)
            .where(w.name == self.name, w.slot <= slot)
            .values(
                granted=case(
                    (w.slot < slot, fresh),
                    (w.used >= cap, 0),
                    (w.used + self.chunk > cap, cap - w.used),
                    else_=self.chunk,
                ),
                used=case(
                    (w.slot < slot, fresh),
                    (w.used + self.chunk > cap, cap),
                    else_=w.used + self.chunk,
                ),
                slot=case((same, w.slot), else_=slot),
            )
            .returning(w.granted)
        )
        with self.db.write() as session:
            got = session.execute(statement).scalar()
            if got is None and session.get(RateWindow, self.name) is None:
                session.add(RateWindow(name=self.name, slot=slot, used=fresh, granted=fresh))
                return fresh
        return int(got or 0)


def limiter_for(db: Database, rate: float) -> SharedRate | None:
    """The deployment-wide limiter for a configured rate; ``None`` (no limit) for 0."""
    return SharedRate(db, rate) if rate > 0 else None
