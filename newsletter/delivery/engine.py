"""The send loop: one thread owns the database, N worker threads own the connections.

The main thread claims keyset batches from the ledger, builds each message just
before handing it over (so at most ``window`` messages exist at any time, whatever
the list size), collects outcomes and writes them back in small transactions.
Workers only ever see ``(job, bytes)`` and return an outcome; they never touch the
database, so SQLite sees one writer and a stalled SMTP server never holds a lock.

Bounds that make a crash cheap: at most ``batch_size`` rows are ``sending`` but not
yet pushed (retried, never duplicated) and at most ``window + flush_every`` messages
were accepted by the server but not yet recorded: that is the duplicate bound.
"""

from __future__ import annotations

import heapq
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

from ..context import Context
from ..lease import Holder, LeaseHeld, acquire
from ..models import DeliveryStatus, IssueStatus, utcnow
from . import ledger, quota
from .ledger import Job, Result
from .outcome import Outcome, SendOutcome, Transport
from .ratelimit import TokenBucket, bucket_for

log = logging.getLogger(__name__)

FLUSH_EVERY = 100  # outcomes per write transaction
FLUSH_SECONDS = 0.1  # ...or this often, whichever comes first
# A deferred delivery gets max_attempts tries per run; after this many runs' worth
# (resumes, upkeep) it is marked failed instead of being retried forever.
RUNS_BEFORE_FAILING = 3
FAILURE_STREAK = 20  # permanent failures in a row with no success: pause, don't burn the list


class Built(Protocol):
    @property
    def message_id(self) -> str: ...
    @property
    def data(self) -> bytes: ...


BuildFn = Callable[[int, str, str], Built]


@dataclass
class Progress:
    """Running totals for a progress bar (whole issue, not just this run)."""

    total: int
    sent: int
    failed: int
    bounced: int
    skipped: int
    retrying: int
    elapsed: float
    sent_this_run: int

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.bounced + self.skipped


@dataclass
class RunStats:
    sent: int = 0
    failed: int = 0
    bounced: int = 0
    skipped: int = 0
    retries: int = 0
    exhausted: int = 0  # rows that used up this run's attempts: left queued
    halt: str | None = None  # stop | pause | cancelled | lease | unreachable | quota
    reason: str | None = None
    elapsed: float = 0.0
    last_retry_text: str | None = None
    error: BaseException | None = field(default=None, repr=False)
    relays: dict[str, int] = field(default_factory=dict)  # relay -> messages it carried


def lease_name(issue_id: int) -> str:
    return f"issue:{issue_id}"


class Run:
    """One sending run of one issue under its lease (see module docstring)."""

    def __init__(
        self,
        ctx: Context,
        issue_id: int,
        transport: Transport,
        build: BuildFn,
        holder: Holder,
        progress: Callable[[Progress], None] | None,
        stop: threading.Event | None,
    ) -> None:
        s = ctx.settings
        self.ctx = ctx
        self.issue_id = issue_id
        self.transport = transport
        self.build = build
        self.holder = holder
        self.progress = progress
        self.stop = stop
        self.batch_size = s.batch_size
        self.max_attempts = s.max_attempts
        self.retry_base = s.retry_base_seconds
        self.lease_ttl = timedelta(seconds=s.lease_seconds)
        self.window = max(16, 8 * transport.concurrency)
        self.bucket: TokenBucket | None = bucket_for(s.send_rate)
        self.cancel = threading.Event()  # tells workers to hand back unsent jobs
        self.jobs: queue.SimpleQueue[tuple[Job, Built] | None] = queue.SimpleQueue()
        self.results: queue.SimpleQueue[tuple[Job, Built, SendOutcome | BaseException | None]] = (
            queue.SimpleQueue()
        )
        self.stats = RunStats()
        self.pending: deque[Job] = deque()
        self.outstanding = 0
        self.cursor = 0
        self.keyset_done = False
        self.retry_heap: list[tuple[float, int]] = []
        self.run_attempts: dict[int, int] = {}
        self.buffer: list[Result] = []
        self.consecutive_drops = 0
        self.failure_streak = 0
        self.throttle_until = 0.0
        self.throttles = 0
        self.total = 0
        self.started = time.monotonic()
        self.base_counts: dict[DeliveryStatus, int] = {}

    # -- workers ---------------------------------------------------------------
    def _worker(self) -> None:
        sender = self.ctx.settings.from_email
        while True:
            item = self.jobs.get()
            if item is None:
                return
            job, built = item
            outcome: SendOutcome | BaseException | None = None
            try:
                if not self.cancel.is_set() and (
                    self.bucket is None or self.bucket.acquire(self.cancel)
                ):
                    envelope = getattr(built, "envelope_from", None) or sender  # VERP if set
                    outcome = self.transport.send(envelope, job.email, built.data)
            except BaseException as exc:  # handed to the main thread, which re-raises
                outcome = exc
            self.results.put((job, built, outcome))

    # -- main thread -----------------------------------------------------------
    def run(self) -> RunStats:
        started = self.started = time.monotonic()
        with self.ctx.db.read() as session:
            self.base_counts = ledger.counts(session, self.issue_id)
        self.total = sum(self.base_counts.values())
        threads = [
            threading.Thread(target=self._worker, name=f"smtp-{i}", daemon=True)
            for i in range(self.transport.concurrency)
        ]
        for t in threads:
            t.start()
        try:
            self._loop()
        except BaseException:
            self.cancel.set()
            raise
        finally:
            for _ in threads:
                self.jobs.put(None)
            while self.outstanding:  # let in-flight messages finish and record them
                try:
                    self._take(self.results.get(timeout=self.lease_ttl.total_seconds() / 4))
                except queue.Empty:  # a slow reply to DATA (up to 10 min): keep the lease
                    self._renew()
            for t in threads:
                t.join()
            self.buffer.extend(Result(j.subscriber_id, None) for j in self.pending)
            self.pending.clear()
            self._flush()
        self.stats.elapsed = time.monotonic() - started
        if self.stats.error is not None:
            raise self.stats.error
        return self.stats

    def _loop(self) -> None:
        last_flush = last_renew = time.monotonic()
        while True:
            now = time.monotonic()
            if self.stats.halt is None and self.stop is not None and self.stop.is_set():
                self._halt("stop", "stopped on request")
            if self.stats.halt is None and now >= self.throttle_until:
                if not self.pending:
                    self._claim_more()
                while self.pending and self.outstanding < self.window and self.stats.halt is None:
                    self._push(self.pending.popleft())
            idle = not self.pending and self.keyset_done and not self.retry_heap
            if self.outstanding == 0 and (self.stats.halt is not None or idle):
                return
            if self.outstanding:
                try:
                    self._take(self.results.get(timeout=0.1))
                    while True:
                        self._take(self.results.get_nowait())
                except queue.Empty:
                    pass
            else:  # nothing in flight: sleep until a retry is due or the throttle ends
                wait = min(0.2, self._next_due() - now)
                if wait > 0:
                    if self.stop is not None:
                        self.stop.wait(wait)
                    else:
                        time.sleep(wait)
            now = time.monotonic()
            if len(self.buffer) >= FLUSH_EVERY or (
                self.buffer and now - last_flush > FLUSH_SECONDS
            ):
                self._flush()
                last_flush = now
            if now - last_renew > self.lease_ttl.total_seconds() / 4:
                self._renew()
                last_renew = now

    def _push(self, job: Job) -> None:
        try:
            built = self.build(job.subscriber_id, job.email, job.name)
        except ValueError as exc:  # an address or name no message can carry
            self.stats.failed += 1
            refused = SendOutcome(Outcome.FAILED, None, f"cannot build the message: {exc}")
            self.buffer.append(Result(job.subscriber_id, refused))
            return
        self.jobs.put((job, built))
        self.outstanding += 1

    def _next_due(self) -> float:
        """When the dispatcher next has something to push (monotonic clock)."""
        due = [self.retry_heap[0][0]] if self.retry_heap else []
        if self.pending or not self.keyset_done:
            due.append(0.0)
        return max(min(due, default=0.0), self.throttle_until)

    def _claim_more(self) -> None:
        """Fill ``pending`` with due retries first, else the next keyset batch."""
        while not self.pending and self.stats.halt is None:
            now = time.monotonic()
            due: list[int] = []
            while self.retry_heap and self.retry_heap[0][0] <= now and len(due) < self.batch_size:
                due.append(heapq.heappop(self.retry_heap)[1])
            if not due and self.keyset_done:
                return
            if due:  # their outcomes must be in the ledger (queued again) before re-claiming
                self._flush()
            with self.ctx.db.write() as session:
                allowed = quota.allowance(session, self.ctx.settings, len(due) or self.batch_size)
                if allowed.count and due:
                    for sid in due[allowed.count :]:
                        heapq.heappush(self.retry_heap, (now, sid))
                    claim = ledger.claim_ids(session, self.issue_id, due[: allowed.count])
                elif allowed.count:
                    claim = ledger.claim_next(session, self.issue_id, self.cursor, allowed.count)
                    if claim.last_id is None and claim.issue_status is IssueStatus.SENDING:
                        self.keyset_done = True
                    elif claim.last_id is not None:
                        self.cursor = claim.last_id
            if not allowed.count:  # the day's quota: wait for what is in flight, then stop
                for sid in due:
                    heapq.heappush(self.retry_heap, (now, sid))
                if self.outstanding == 0:
                    self._halt("quota", allowed.reason or "daily quota reached")
                return
            if claim.issue_status is not IssueStatus.SENDING:
                self._halt("cancelled", f"the issue is now {claim.issue_status}")
                return
            self.stats.skipped += claim.skipped
            self.pending.extend(claim.jobs)

    def _take(self, item: tuple[Job, Built, SendOutcome | BaseException | None]) -> None:
        job, built, outcome = item
        self.outstanding -= 1
        sid = job.subscriber_id
        if outcome is None:  # never pushed (stop/pause): back to the queue, untouched
            self.buffer.append(Result(sid, None))
            return
        if isinstance(outcome, BaseException):
            self.buffer.append(Result(sid, None))
            if self.stats.error is None:
                self.stats.error = outcome
            self._halt("error", f"internal error: {outcome!r}")
            return
        kind = outcome.outcome
        retry_at = None
        if kind is Outcome.SENT:
            self.stats.sent += 1
            if outcome.relay is not None:
                self.stats.relays[outcome.relay] = self.stats.relays.get(outcome.relay, 0) + 1
            self.failure_streak = 0
            self.consecutive_drops = 0
            self.throttles = 0
        elif kind is Outcome.RETRY:
            self.stats.retries += 1
            self.stats.last_retry_text = outcome.text
            n = self.run_attempts.get(sid, 0) + 1
            self.run_attempts[sid] = n
            delay = self._backoff(n)
            retry_at = utcnow() + timedelta(seconds=delay)
            if n < self.max_attempts:
                heapq.heappush(self.retry_heap, (time.monotonic() + delay, sid))
            else:
                self.stats.exhausted += 1
            if outcome.code is None or outcome.code == 421:
                self._note_drop()
        elif kind is Outcome.BOUNCE:
            self.stats.bounced += 1
        elif kind is Outcome.FAILED:
            self.stats.failed += 1
            self.failure_streak += 1
            if self.failure_streak >= FAILURE_STREAK:
                self._halt(
                    "pause",
                    f"{self.failure_streak} messages in a row refused permanently, "
                    f"last: {outcome.text}",
                )
        elif kind is Outcome.POLICY:
            self._halt("pause", outcome.text)
        elif kind is Outcome.QUOTA:  # recorded by the ledger: no attempt, queued until tomorrow
            self._halt("quota", quota.relay_reason(self.ctx.settings, outcome.text))
        self.buffer.append(Result(sid, outcome, built.message_id, retry_at))

    def _note_drop(self) -> None:
        """Many connection failures in a row: the server is down, stop hammering it."""
        self.consecutive_drops += 1
        if self.consecutive_drops < 2 * self.transport.concurrency + 2:
            return
        self.consecutive_drops = 0
        self.throttles += 1
        if self.throttles >= self.max_attempts:
            self._halt(
                "unreachable", f"the mail server keeps failing: {self.stats.last_retry_text}"
            )
        else:
            self.throttle_until = time.monotonic() + self._backoff(self.throttles)

    def _backoff(self, attempt: int) -> float:
        return float(min(300.0, self.retry_base * 2 ** (attempt - 1)))

    def _halt(self, why: str, reason: str) -> None:
        if self.stats.halt is None:
            self.stats.halt = why
            self.stats.reason = reason
            self.cancel.set()

    def _flush(self) -> None:
        if not self.buffer:
            return
        batch, self.buffer = self.buffer, []
        with self.ctx.db.write() as session:
            ledger.record(
                session, self.issue_id, batch, give_up_after=self.max_attempts * RUNS_BEFORE_FAILING
            )
            status = ledger.issue_status(session, self.issue_id)
        if status is not IssueStatus.SENDING:  # `issues cancel`: stop now, not after the batch
            self._halt("cancelled", f"the issue is now {status}")
        if self.progress is not None:
            self.progress(self.snapshot())

    def _renew(self) -> None:
        try:
            with self.ctx.db.write() as session:
                acquire(session, lease_name(self.issue_id), self.holder, self.lease_ttl)
        except LeaseHeld as exc:
            self._halt("lease", f"lost the sending lease: {exc}")

    def snapshot(self) -> Progress:
        b, st = self.base_counts, self.stats
        return Progress(
            total=self.total,
            sent=b.get(DeliveryStatus.SENT, 0) + st.sent,
            failed=b.get(DeliveryStatus.FAILED, 0) + st.failed,
            bounced=b.get(DeliveryStatus.BOUNCED, 0) + st.bounced,
            skipped=b.get(DeliveryStatus.SKIPPED, 0) + st.skipped,
            retrying=len(self.retry_heap),
            elapsed=time.monotonic() - self.started,
            sent_this_run=st.sent,
        )
