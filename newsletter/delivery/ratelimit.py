"""A thread-safe token bucket: ``NEWSLETTER_SEND_RATE`` messages per second.

Implemented as a reservation clock rather than a polling loop: each caller takes the
next free slot under a lock and sleeps *outside* it until that slot comes, so N
worker threads share one exact rate with no busy-waiting and no thundering herd.
A small burst (a tenth of a second's worth, at least one message) absorbs
scheduling jitter without letting the long-run average drift above the limit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


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
