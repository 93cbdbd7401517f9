"""The send loop: one thread owns the database, N worker threads own the connections.

Three pieces, each on its own (issue 9), put together by :class:`Run`:

* :class:`Claims` takes rows from the ledger: keyset batches of queued rows (``FOR
  UPDATE SKIP LOCKED`` on PostgreSQL, BEGIN IMMEDIATE on SQLite), this sender's due
  retries, and rows whose claim expired because their sender died.  It renews this
  sender's claims while it works, so several senders on any number of machines
  share one issue and no row is ever worked by two live senders.
* :class:`Pusher` owns the SMTP worker threads.  Workers only ever see ``(job,
  bytes)`` and return an outcome; they never touch the database, so SQLite sees
  one writer and a stalled SMTP server never holds a lock.
* :class:`Recorder` writes outcomes back in small transactions and checks the
  issue's status at every flush (and at least twice a second), so a pause, a
  cancel or another sender's 5.7.x stops this sender within a second.

Bounds that make a crash cheap: at most ``batch_size`` rows are ``sending`` but not
yet pushed (retried, never duplicated) and at most ``window + flush_every`` messages
were accepted by the server but not yet recorded: that is the duplicate bound.
"""

from __future__ import annotations

import heapq
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy.orm import Session

from ..context import Context
from ..db import Pinned
from ..lease import Holder
from ..models import DeliveryStatus, IssueStatus, utcnow
from . import ledger, quota
from .ledger import Claimant, Job, Result
from .outcome import Outcome, SendOutcome, Transport
from .ratelimit import limiter_for

log = logging.getLogger(__name__)

FLUSH_EVERY = 100  # outcomes per write transaction
FLUSH_SECONDS = 0.1  # ...or this often, whichever comes first
STATUS_SECONDS = 0.5  # the issue's status is read at least this often, even when idle
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
Taken = tuple[Job, Built, SendOutcome | BaseException | None]


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
    halt: str | None = None  # stop | pause | cancelled | unreachable | error | quota
    reason: str | None = None
    elapsed: float = 0.0
    last_retry_text: str | None = None
    relays: dict[str, int] = field(default_factory=dict)  # relay -> messages it carried
    error: BaseException | None = field(default=None, repr=False)


def sender_id(holder: Holder) -> str:
    """How this process signs its claims: ``host:pid:token`` (fits the column)."""
    return f"{holder.host[:80]}:{holder.pid}:{holder.token[:12]}"


def dead_local_senders(senders: list[str], host: str) -> list[str]:
    """Senders on this host whose process is gone: their claims need not wait to expire.

    Expiry is the general rule (another machine cannot see our processes); on this
    host a dead pid is certain, and waiting would only delay the resume of a crash.
    """
    dead = []
    for sender in senders:
        where, _, rest = sender.rpartition(":")[0].rpartition(":")
        if where != host[:80] or not rest.isdigit():
            continue
        pid = int(rest)
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            dead.append(sender)
        except PermissionError:
            pass
    return dead


class Halts:
    """The first reason to stop wins; setting it tells the workers to hand jobs back."""

    def __init__(self, stats: RunStats) -> None:
        self.stats = stats
        self.cancel = threading.Event()

    @property
    def halted(self) -> bool:
        return self.stats.halt is not None

    def halt(self, why: str, reason: str) -> None:
        if self.stats.halt is None:
            self.stats.halt = why
            self.stats.reason = reason
            self.cancel.set()


class Claims:
    """This sender's share of the issue's rows (see module docstring)."""

    def __init__(
        self, ctx: Context, issue_id: int, holder: Holder, halts: Halts, writer: Pinned
    ) -> None:
        s = ctx.settings
        self.ctx = ctx
        self.writer = writer
        self.issue_id = issue_id
        self.holder = holder
        self.sender = sender_id(holder)
        self.halts = halts
        self.batch_size = s.batch_size
        self.ttl = timedelta(seconds=s.lease_seconds)
        self.pending: deque[Job] = deque()
        self.cursor = 0
        self.swept = False  # one pass from the start after the keyset ends (taken-back rows)
        self.keyset_done = False
        self.retry_heap: list[tuple[float, int]] = []

    def claimant(self) -> Claimant:
        return Claimant(self.sender, utcnow() + self.ttl)

    @property
    def idle(self) -> bool:
        return not self.pending and self.keyset_done and not self.retry_heap

    def next_due(self) -> float:
        """When there is next something to push (monotonic clock; 0 = now)."""
        due = [self.retry_heap[0][0]] if self.retry_heap else []
        if self.pending or not self.keyset_done:
            due.append(0.0)
        return min(due, default=0.0)

    def defer(self, subscriber_id: int, delay: float) -> None:
        heapq.heappush(self.retry_heap, (time.monotonic() + delay, subscriber_id))

    def due_retries(self) -> list[int]:
        now = time.monotonic()
        due: list[int] = []
        while self.retry_heap and self.retry_heap[0][0] <= now and len(due) < self.batch_size:
            due.append(heapq.heappop(self.retry_heap)[1])
        return due

    def claim(self, due: list[int]) -> ledger.Claim | quota.Allowance:
        """One claiming transaction: these due retries, else the next keyset batch.

        The day's quota is asked in the same transaction (it counts every sender's
        ``sending`` rows as reserved, serialised across senders), so a claim is never
        larger than what is left.  Due retries beyond the allowance go back on the
        heap; at zero the :class:`quota.Allowance` itself is returned.
        """
        with self.writer.write() as session:
            allowed = quota.allowance(session, self.ctx.settings, len(due) or self.batch_size)
            if not allowed.count:
                claim: ledger.Claim | None = None
            elif due:
                claim = ledger.claim_ids(
                    session, self.issue_id, due[: allowed.count], self.claimant()
                )
            else:
                claim = ledger.claim_next(
                    session, self.issue_id, self.cursor, allowed.count, self.claimant()
                )
        if claim is None:
            for sid in due:
                self.defer(sid, 0.0)
            return allowed
        if due:
            for sid in due[allowed.count :]:
                self.defer(sid, 0.0)
            return claim
        if claim.last_id is not None:
            self.cursor = claim.last_id
        elif claim.issue_status is IssueStatus.SENDING:
            self._end_of_keyset()
        return claim

    def _end_of_keyset(self) -> None:
        """The keyset reached the end: one more pass from the start, then done.

        Rows behind the cursor become claimable again when their sender died (taken
        back) or stopped (released), or when another sender's retry fell due.
        """
        if self.swept or self.cursor == 0:
            self.keyset_done = True
        else:
            self.swept = True
            self.cursor = 0

    def renew(self) -> None:
        """Keep our claims alive, and take back rows whose claim expired (dead senders)."""
        now = utcnow()
        with self.writer.write() as session:
            ledger.renew_claims(session, self.issue_id, Claimant(self.sender, now + self.ttl))
            taken = self._take_back(session, now)
        if taken:
            self.reopen()

    def take_back(self) -> int:
        """On start and when idle: rows of dead senders go back to the queue.

        Looked for in a read first, so an idle sender watching live ones does not
        take the write lock (SQLite) several times a second for nothing.
        """
        now = utcnow()
        with self.ctx.db.read() as session:
            holders = ledger.claim_holders(session, self.issue_id, now, besides=self.sender)
            stale = ledger.expired_claims(session, self.issue_id, now)
        if not stale and not dead_local_senders(list(holders), self.holder.host):
            return 0
        with self.writer.write() as session:
            taken = self._take_back(session, now)
        if taken:
            self.reopen()
        return taken

    def _take_back(self, session: Session, now: datetime) -> int:
        holders = ledger.claim_holders(session, self.issue_id, now, besides=self.sender)
        dead = dead_local_senders(list(holders), self.holder.host)
        taken = ledger.take_back_expired(session, self.issue_id, now, dead)
        if taken:
            log.warning("issue %s: took back %s rows of senders that died", self.issue_id, taken)
        return taken

    def reopen(self) -> None:
        self.keyset_done = self.swept = False
        self.cursor = 0

    def others_working(self) -> bool:
        """Another live sender still holds rows of this issue (it may yet die: watch it)."""
        with self.ctx.db.read() as session:
            return bool(ledger.claim_holders(session, self.issue_id, utcnow(), besides=self.sender))


class Pusher:
    """The SMTP worker threads, fed at most ``window`` messages ahead of their outcomes."""

    def __init__(self, ctx: Context, transport: Transport, halts: Halts) -> None:
        self.transport = transport
        self.sender = ctx.settings.from_email
        self.cancel = halts.cancel
        self.window = max(16, 8 * transport.concurrency)
        self.bucket = limiter_for(ctx.db, ctx.settings.send_rate)
        self.jobs: queue.SimpleQueue[tuple[Job, Built] | None] = queue.SimpleQueue()
        self.results: queue.SimpleQueue[Taken] = queue.SimpleQueue()
        self.outstanding = 0
        self.threads = [
            threading.Thread(target=self._worker, name=f"smtp-{i}", daemon=True)
            for i in range(transport.concurrency)
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    @property
    def has_room(self) -> bool:
        return self.outstanding < self.window

    def push(self, job: Job, built: Built) -> None:
        self.jobs.put((job, built))
        self.outstanding += 1

    def take(self, timeout: float) -> list[Taken]:
        """Outcomes that arrived (waiting up to ``timeout`` for the first one)."""
        out: list[Taken] = []
        try:
            out.append(self.results.get(timeout=timeout))
            while True:
                out.append(self.results.get_nowait())
        except queue.Empty:
            pass
        self.outstanding -= len(out)
        return out

    def stop(self) -> None:
        for _ in self.threads:
            self.jobs.put(None)

    def join(self) -> None:
        for t in self.threads:
            t.join()

    def _worker(self) -> None:
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
                    envelope = getattr(built, "envelope_from", None) or self.sender  # VERP
                    outcome = self.transport.send(envelope, job.email, built.data)
            except BaseException as exc:  # handed to the main thread, which re-raises
                outcome = exc
            self.results.put((job, built, outcome))


class Recorder:
    """Outcomes into the ledger in small batches; the issue's status read at each flush."""

    def __init__(
        self,
        ctx: Context,
        issue_id: int,
        sender: str,
        halts: Halts,
        progress: Callable[[], None] | None,
        writer: Pinned,
    ) -> None:
        self.ctx = ctx
        self.writer = writer
        self.issue_id = issue_id
        self.sender = sender
        self.halts = halts
        self.progress = progress
        self.give_up_after = ctx.settings.max_attempts * RUNS_BEFORE_FAILING
        self.buffer: list[Result] = []
        self.last_flush = self.last_status = time.monotonic()

    def add(self, result: Result) -> None:
        self.buffer.append(result)

    def due(self, now: float) -> bool:
        return len(self.buffer) >= FLUSH_EVERY or (
            now - self.last_flush > FLUSH_SECONDS
            and (bool(self.buffer) or now - self.last_status > STATUS_SECONDS)
        )

    def flush(self) -> None:
        batch, self.buffer = self.buffer, []
        self.last_flush = self.last_status = time.monotonic()
        with self.writer.write() as session:
            if batch:
                ledger.record(
                    session,
                    self.issue_id,
                    batch,
                    give_up_after=self.give_up_after,
                    sender=self.sender,
                )
            status = ledger.issue_status(session, self.issue_id)
        if status is not IssueStatus.SENDING:  # cancel, or another sender paused it
            self.halts.halt("cancelled", f"the issue is now {status}")
        if batch and self.progress is not None:
            self.progress()


class Run:
    """One sender's run on one issue, next to any number of others (module docstring)."""

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
        self.build = build
        self.stop = stop
        self.stats = RunStats()
        self.halts = Halts(self.stats)
        self.writer = Pinned(ctx.db)
        self.claims = Claims(ctx, issue_id, holder, self.halts, self.writer)
        self.pusher = Pusher(ctx, transport, self.halts)
        report = (lambda: progress(self.snapshot())) if progress is not None else None
        self.recorder = Recorder(ctx, issue_id, self.claims.sender, self.halts, report, self.writer)
        self.max_attempts = s.max_attempts
        self.retry_base = s.retry_base_seconds
        self.renew_every = s.lease_seconds / 4
        self.concurrency = transport.concurrency
        self.run_attempts: dict[int, int] = {}
        self.consecutive_drops = 0
        self.failure_streak = 0
        self.throttle_until = 0.0
        self.throttles = 0
        self.total = 0
        self.started = time.monotonic()
        self.base_counts: dict[DeliveryStatus, int] = {}

    @property
    def sender(self) -> str:
        return self.claims.sender

    def run(self) -> RunStats:
        started = self.started = time.monotonic()
        with self.ctx.db.read() as session:
            self.base_counts = ledger.counts(session, self.issue_id)
        self.total = sum(self.base_counts.values())
        self.claims.take_back()  # rows of senders that died before we came
        self.pusher.start()
        try:
            self._loop()
        except BaseException:
            self.halts.cancel.set()
            raise
        finally:
            try:
                self._drain()
            finally:
                self.writer.close()
        self.stats.elapsed = time.monotonic() - started
        if self.stats.error is not None:
            raise self.stats.error
        return self.stats

    def _drain(self) -> None:
        """Let in-flight messages finish and record them; release what was never pushed."""
        self.pusher.stop()
        last_renew = time.monotonic()
        while self.pusher.outstanding:
            for item in self.pusher.take(timeout=0.5):
                self._take(item)
            if time.monotonic() - last_renew > self.renew_every:  # a slow reply to DATA
                self.claims.renew()
                last_renew = time.monotonic()
        self.pusher.join()
        self.recorder.buffer.extend(Result(j.subscriber_id, None) for j in self.claims.pending)
        self.claims.pending.clear()
        self.recorder.flush()

    def _loop(self) -> None:
        last_renew = time.monotonic()
        while True:
            if not self.halts.halted and self.stop is not None and self.stop.is_set():
                self.halts.halt("stop", "stopped on request")
            if not self.halts.halted and time.monotonic() >= self.throttle_until:
                self._feed()
            if self._done():
                return
            self._collect()
            now = time.monotonic()
            if self.recorder.due(now):
                self.recorder.flush()
            if now - last_renew > self.renew_every:
                self.claims.renew()
                last_renew = now

    def _done(self) -> bool:
        """Nothing in flight, and halted or with nothing left that we could claim."""
        if self.pusher.outstanding:
            return False
        if self.halts.halted:
            return True
        return self.claims.idle and not self._others_may_need_us()

    def _feed(self) -> None:
        """Claim when nothing is pending, then push while the window has room."""
        if not self.claims.pending:
            self._claim_more()
        while self.claims.pending and self.pusher.has_room and not self.halts.halted:
            self._push(self.claims.pending.popleft())

    def _collect(self) -> None:
        """Take outcomes as they come; with nothing in flight, sleep until work is due."""
        if self.pusher.outstanding:
            for item in self.pusher.take(timeout=0.1):
                self._take(item)
            return
        wait = min(0.2, max(self.claims.next_due(), self.throttle_until) - time.monotonic())
        if wait > 0:
            if self.stop is not None:
                self.stop.wait(wait)
            else:
                time.sleep(wait)

    def _others_may_need_us(self) -> bool:
        """Idle: stay while another sender holds rows (it may die and leave them to us)."""
        if self.claims.take_back():
            return True
        if not self.claims.others_working():
            # A claim may have expired between the two looks: one more take-back.
            return self.claims.take_back() > 0
        if self.stop is not None:
            self.stop.wait(0.2)
        else:
            time.sleep(0.2)
        self.claims.reopen()
        return True

    def _claim_more(self) -> None:
        """Fill ``pending`` with due retries first, else the next keyset batch."""
        while not self.claims.pending and not self.halts.halted:
            due = self.claims.due_retries()
            if not due and self.claims.keyset_done:
                return
            if due:  # their outcomes must be in the ledger (queued again) before re-claiming
                self.recorder.flush()
            claim = self.claims.claim(due)
            if isinstance(claim, quota.Allowance):  # the day's quota: finish in-flight, stop
                if self.pusher.outstanding == 0:
                    self.halts.halt("quota", claim.reason or "daily quota reached")
                return
            if claim.issue_status is not IssueStatus.SENDING:
                self.halts.halt("cancelled", f"the issue is now {claim.issue_status}")
                return
            self.stats.skipped += claim.skipped
            self.claims.pending.extend(claim.jobs)

    def _push(self, job: Job) -> None:
        try:
            built = self.build(job.subscriber_id, job.email, job.name)
        except ValueError as exc:  # an address or name no message can carry
            self.stats.failed += 1
            refused = SendOutcome(Outcome.FAILED, None, f"cannot build the message: {exc}")
            self.recorder.add(Result(job.subscriber_id, refused))
            return
        self.pusher.push(job, built)

    def _take(self, item: Taken) -> None:
        job, built, outcome = item
        sid = job.subscriber_id
        if outcome is None:  # never pushed (stop/pause): back to the queue, untouched
            self.recorder.add(Result(sid, None))
            return
        if isinstance(outcome, BaseException):
            self.recorder.add(Result(sid, None))
            if self.stats.error is None:
                self.stats.error = outcome
            self.halts.halt("error", f"internal error: {outcome!r}")
            return
        retry_at = self._count(sid, outcome)
        self.recorder.add(Result(sid, outcome, built.message_id, retry_at))

    def _count(self, sid: int, outcome: SendOutcome) -> datetime | None:
        """Update the run's tallies for one outcome; returns when to retry (deferrals)."""
        kind = outcome.outcome
        if kind is Outcome.SENT:
            self.stats.sent += 1
            if outcome.relay is not None:
                self.stats.relays[outcome.relay] = self.stats.relays.get(outcome.relay, 0) + 1
            self.failure_streak = self.consecutive_drops = self.throttles = 0
        elif kind is Outcome.RETRY:
            return self._defer(sid, outcome)
        elif kind is Outcome.BOUNCE:
            self.stats.bounced += 1
        elif kind is Outcome.FAILED:
            self.stats.failed += 1
            self.failure_streak += 1
            if self.failure_streak >= FAILURE_STREAK:
                self.halts.halt(
                    "pause",
                    f"{self.failure_streak} messages in a row refused permanently, "
                    f"last: {outcome.text}",
                )
        elif kind is Outcome.POLICY:
            self.halts.halt("pause", outcome.text)
        elif kind is Outcome.QUOTA:  # recorded by the ledger: no attempt, queued until tomorrow
            self.halts.halt("quota", quota.relay_reason(self.ctx.settings, outcome.text))
        return None

    def _defer(self, sid: int, outcome: SendOutcome) -> datetime:
        self.stats.retries += 1
        self.stats.last_retry_text = outcome.text
        n = self.run_attempts.get(sid, 0) + 1
        self.run_attempts[sid] = n
        delay = self._backoff(n)
        if n < self.max_attempts:
            self.claims.defer(sid, delay)
        else:
            self.stats.exhausted += 1
        if outcome.code is None or outcome.code == 421:
            self._note_drop()
        return utcnow() + timedelta(seconds=delay)

    def _note_drop(self) -> None:
        """Many connection failures in a row: the server is down, stop hammering it."""
        self.consecutive_drops += 1
        if self.consecutive_drops < 2 * self.concurrency + 2:
            return
        self.consecutive_drops = 0
        self.throttles += 1
        if self.throttles >= self.max_attempts:
            self.halts.halt(
                "unreachable", f"the mail server keeps failing: {self.stats.last_retry_text}"
            )
        else:
            self.throttle_until = time.monotonic() + self._backoff(self.throttles)

    def _backoff(self, attempt: int) -> float:
        return float(min(300.0, self.retry_base * 2 ** (attempt - 1)))

    def snapshot(self) -> Progress:
        b, st = self.base_counts, self.stats
        return Progress(
            total=self.total,
            sent=b.get(DeliveryStatus.SENT, 0) + st.sent,
            failed=b.get(DeliveryStatus.FAILED, 0) + st.failed,
            bounced=b.get(DeliveryStatus.BOUNCED, 0) + st.bounced,
            skipped=b.get(DeliveryStatus.SKIPPED, 0) + st.skipped,
            retrying=len(self.claims.retry_heap),
            elapsed=time.monotonic() - self.started,
            sent_this_run=st.sent,
        )
