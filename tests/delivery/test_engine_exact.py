"""The send engine's bookkeeping, outcome by outcome: exact tallies, halts and reasons.

Issue 16 (mutation kill rate).  A real :class:`Run` on a real database (the ``ctx``
settings), fed outcomes the way its worker threads hand them over (``_take``), so
each rule is checked at its exact threshold: the 20th permanent failure in a row,
the ``2 * connections + 2``-th dropped connection, the last attempt of a run.  The
transport is a sink that records what it is asked to send (the ``Transport``
protocol, as in test_delivery_review); nothing of ours is replaced.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
from _delivery_support import add_subscribers, make_issue
from sqlalchemy import select, update

from newsletter.config import Settings
from newsletter.context import Context
from newsletter.delivery import ledger
from newsletter.delivery.engine import (
    FAILURE_STREAK,
    Progress,
    Pusher,
    Run,
    dead_local_senders,
    sender_id,
)
from newsletter.delivery.ledger import Claimant, Job, Result
from newsletter.delivery.outcome import Outcome, SendOutcome
from newsletter.lease import Holder
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Issue,
    IssueStatus,
    Subscriber,
    SubscriberStatus,
    utcnow,
)

HOST = "test-host"
TOKEN = "0123456789abcdef0123"


@dataclass(frozen=True)
class Built:
    message_id: str
    data: bytes


@dataclass(frozen=True)
class VerpBuilt:
    message_id: str
    data: bytes
    envelope_from: str


def build(sid: int, email: str, name: str) -> Built:
    if email.startswith("bad"):
        raise ValueError(f"no message can carry {email!r}")
    return Built(f"<{sid}@example.com>", f"To: {name} <{email}>\r\n\r\nHi\r\n".encode())


class Sink:
    """A transport that answers every message with ``answer`` and records the envelope."""

    description = "sink"

    def __init__(
        self,
        concurrency: int,
        answer: SendOutcome | BaseException | None = None,
        answers: dict[str, SendOutcome] | None = None,
    ):
        self.concurrency = concurrency
        self.answer = answer or SendOutcome(Outcome.SENT, 250, "2.0.0 Ok")
        self.answers = answers or {}  # per recipient
        self.calls: list[tuple[str, str, bytes]] = []
        self.lock = threading.Lock()

    def send(self, envelope_from: str, recipient: str, data: bytes) -> SendOutcome:
        with self.lock:
            self.calls.append((envelope_from, recipient, data))
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answers.get(recipient, self.answer)

    def close(self) -> None:
        pass


def dead_pid() -> int:
    """The pid of a process that has exited (reaped: ``os.kill`` finds no such process)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


MakeRun = Callable[..., Run]


@pytest.fixture
def make_run(make_settings: Callable[..., Settings]) -> Iterator[MakeRun]:
    """A Run on a fresh issue with ``readers`` queued (threads not started)."""
    made: list[tuple[Run, Context]] = []

    def factory(
        readers: int = 0,
        concurrency: int = 2,
        progress: Callable[[Progress], None] | None = None,
        pid: int | None = None,
        transport: Sink | None = None,
        stop: threading.Event | None = None,
        **overrides: str,
    ) -> Run:
        ctx = Context.open(make_settings(**overrides))
        add_subscribers(ctx, readers)
        issue_id = make_issue(ctx)
        holder = Holder(token=TOKEN, host=HOST, pid=pid or os.getpid())
        run = Run(ctx, issue_id, transport or Sink(concurrency), build, holder, progress, stop)
        made.append((run, ctx))
        return run

    yield factory
    for run, ctx in made:
        run.writer.close()
        ctx.close()


def job(sid: int) -> Job:
    return Job(sid, f"reader{sid}@example.org", f"Reader {sid}")


def take(run: Run, sid: int, outcome: SendOutcome | BaseException | None) -> None:
    run._take((job(sid), build(sid, job(sid).email, job(sid).name), outcome))


def delivery_rows(ctx: Context, issue_id: int) -> dict[int, tuple[str, int, str | None]]:
    with ctx.db.read() as session:
        found = session.execute(
            select(
                Delivery.subscriber_id, Delivery.status, Delivery.attempts, Delivery.claimed_by
            ).where(Delivery.issue_id == issue_id)
        ).all()
    return {sid: (DeliveryStatus(st).value, n, who) for sid, st, n, who in found}


def set_issue(ctx: Context, issue_id: int, status: IssueStatus) -> None:
    with ctx.db.write() as session:
        session.execute(update(Issue).where(Issue.id == issue_id).values(status=status))


SENT = SendOutcome(Outcome.SENT, 250, "2.0.0 Ok")
DROPPED = SendOutcome(Outcome.RETRY, None, "connection reset by peer")
GREY = SendOutcome(Outcome.RETRY, 451, "4.7.1 greylisted")
REFUSED = SendOutcome(Outcome.FAILED, 554, "5.6.0 content rejected")


# -- identities ---------------------------------------------------------------------


def test_sender_id_is_host_pid_and_token_prefix() -> None:
    long_host = "h" * 90
    assert sender_id(Holder(token=TOKEN, host=HOST, pid=42)) == "test-host:42:0123456789ab"
    assert sender_id(Holder(token=TOKEN, host=long_host, pid=7)) == f"{'h' * 80}:7:0123456789ab"


def test_dead_local_senders_are_only_this_hosts_exited_processes() -> None:
    gone, also_gone = dead_pid(), dead_pid()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        senders = [
            f"other-host:{gone}:tok",  # another machine: its pids are not ours to judge
            f"{HOST}:{os.getpid()}:tok",  # this very process
            f"{HOST}:not-a-pid:tok",
            f"{HOST}:{alive.pid}:tok",
            f"{HOST}:{gone}:tok",
            f"{HOST}:{also_gone}:tok",
        ]
        assert dead_local_senders(senders, HOST) == [
            f"{HOST}:{gone}:tok",
            f"{HOST}:{also_gone}:tok",
        ]
        with pytest.raises(subprocess.TimeoutExpired):  # only asked if it exists, not signalled
            alive.wait(timeout=0.5)
    finally:
        alive.kill()
        alive.wait()


def test_dead_local_senders_with_a_colon_or_a_long_host_name() -> None:
    gone = dead_pid()
    assert dead_local_senders([f"node:7:{gone}:tok"], "node:7") == [f"node:7:{gone}:tok"]
    long_host = "h" * 90
    signed = sender_id(Holder(token=TOKEN, host=long_host, pid=gone))
    assert dead_local_senders([signed], long_host) == [signed]


# -- progress -----------------------------------------------------------------------


def test_progress_before_the_run_started_is_all_zero(make_run: MakeRun) -> None:
    run = make_run()
    before = time.monotonic()
    p = run.snapshot()
    assert (p.total, p.sent, p.failed, p.bounced, p.skipped, p.retrying, p.sent_this_run) == (
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    )
    assert 0 <= p.elapsed <= time.monotonic() - run.started
    assert run.started <= before


def test_progress_adds_this_run_to_what_the_ledger_already_had(make_run: MakeRun) -> None:
    reports: list[Progress] = []
    sink = Sink(
        2,
        answers={
            "reader000008@example.org": SendOutcome(Outcome.BOUNCE, 550, "5.1.1 unknown"),
            "reader000009@example.org": REFUSED,
        },
    )
    run = make_run(11, progress=reports.append, transport=sink)
    ctx, issue = run.ctx, run.issue_id
    ids = sorted(delivery_rows(ctx, issue))
    for status, chosen in (
        (DeliveryStatus.SENT, ids[:1]),
        (DeliveryStatus.FAILED, ids[1:3]),
        (DeliveryStatus.BOUNCED, ids[3:6]),
        (DeliveryStatus.SKIPPED, ids[6:7]),
    ):
        with ctx.db.write() as session:
            session.execute(
                update(Delivery)
                .where(Delivery.issue_id == issue, Delivery.subscriber_id.in_(chosen))
                .values(status=status)
            )
    with ctx.db.write() as session:  # left after the issue was queued: skipped by this run
        session.execute(
            update(Subscriber)
            .where(Subscriber.id == ids[10])
            .values(status=SubscriberStatus.UNSUBSCRIBED)
        )
    started = time.monotonic()
    stats = run.run()
    assert 0 < stats.elapsed <= time.monotonic() - started
    assert (stats.sent, stats.failed, stats.bounced, stats.skipped, stats.halt) == (
        1,
        1,
        1,
        1,
        None,
    )
    last = reports[-1]
    assert (last.total, last.sent, last.failed, last.bounced, last.skipped) == (11, 2, 3, 4, 2)
    assert (last.retrying, last.sent_this_run, last.done) == (0, 1, 11)
    assert 0 <= last.elapsed <= stats.elapsed
    assert sorted(c[1] for c in sink.calls) == [f"reader{i:06d}@example.org" for i in (7, 8, 9)]
    assert {c[0] for c in sink.calls} == {"news@example.com"}
    assert [c[2] for c in sink.calls if c[1] == "reader000007@example.org"] == [
        b"To: Reader 7 <reader000007@example.org>\r\n\r\nHi\r\n"
    ]
    assert [delivery_rows(ctx, issue)[sid][0] for sid in ids[7:]] == [
        "sent",
        "bounced",
        "failed",
        "skipped",
    ]


# -- outcomes, one by one -------------------------------------------------------------


def test_deliveries_are_tallied_per_relay(make_run: MakeRun) -> None:
    run = make_run()
    take(run, 1, SendOutcome(Outcome.SENT, 250, "ok", relay="smtp://a"))
    take(run, 2, SendOutcome(Outcome.SENT, 250, "ok", relay="smtp://b"))
    take(run, 3, SendOutcome(Outcome.SENT, 250, "ok", relay="smtp://a"))
    take(run, 4, SENT)
    take(run, 5, SendOutcome(Outcome.BOUNCE, 550, "5.1.1 unknown"))
    take(run, 6, SendOutcome(Outcome.BOUNCE, 550, "5.1.1 unknown"))
    assert (run.stats.sent, run.stats.bounced, run.stats.failed) == (4, 2, 0)
    assert run.stats.relays == {"smtp://a": 2, "smtp://b": 1}
    assert run.recorder.buffer[0] == Result(
        1, SendOutcome(Outcome.SENT, 250, "ok", relay="smtp://a"), "<1@example.com>", None
    )
    assert [r.subscriber_id for r in run.recorder.buffer] == [1, 2, 3, 4, 5, 6]
    assert run.recorder.buffer[4] == Result(
        5, SendOutcome(Outcome.BOUNCE, 550, "5.1.1 unknown"), "<5@example.com>", None
    )
    assert run.stats.halt is None


def test_twenty_permanent_failures_in_a_row_pause_the_issue(make_run: MakeRun) -> None:
    run = make_run()
    for sid in range(FAILURE_STREAK - 1):
        take(run, sid, REFUSED)
    assert (run.stats.failed, run.stats.halt) == (FAILURE_STREAK - 1, None)
    take(run, 99, REFUSED)
    assert run.stats.failed == FAILURE_STREAK
    assert (run.stats.halt, run.stats.reason) == (
        "pause",
        "20 messages in a row refused permanently, last: 554 5.6.0 content rejected",
    )
    assert run.halts.cancel.is_set()


def test_a_delivery_breaks_the_failure_streak(make_run: MakeRun) -> None:
    run = make_run()
    for sid in range(10):
        take(run, sid, REFUSED)
    take(run, 10, SENT)
    for sid in range(11, 11 + FAILURE_STREAK - 1):
        take(run, sid, REFUSED)
    assert (run.stats.failed, run.stats.halt) == (10 + FAILURE_STREAK - 1, None)


def test_a_policy_refusal_pauses_with_the_servers_words(make_run: MakeRun) -> None:
    run = make_run()
    take(run, 1, SendOutcome(Outcome.POLICY, 554, "5.7.1 blocked using zen"))
    assert (run.stats.halt, run.stats.reason) == ("pause", "554 5.7.1 blocked using zen")
    assert run.stats.failed == 0


def test_a_relay_quota_refusal_stops_until_tomorrow(make_run: MakeRun) -> None:
    run = make_run(NEWSLETTER_TIMEZONE="Europe/Paris")
    take(run, 1, SendOutcome(Outcome.QUOTA, 550, "5.4.6 daily quota exceeded"))
    assert (run.stats.halt, run.stats.reason) == (
        "quota",
        "the relay's daily quota is used up (550 5.4.6 daily quota exceeded); "
        "the rest stay queued until tomorrow (00:00 Europe/Paris)",
    )


def test_a_message_never_pushed_is_released_untouched(make_run: MakeRun) -> None:
    run = make_run()
    take(run, 7, None)
    assert run.recorder.buffer == [Result(7, None)]
    assert (run.stats.sent, run.stats.failed, run.stats.halt) == (0, 0, None)


def test_a_worker_error_halts_and_keeps_the_first_error(make_run: MakeRun) -> None:
    run = make_run()
    first, second = RuntimeError("boom"), KeyError("later")
    take(run, 1, first)
    take(run, 2, second)
    assert run.recorder.buffer == [Result(1, None), Result(2, None)]
    assert run.stats.error is first
    assert (run.stats.halt, run.stats.reason) == ("error", "internal error: RuntimeError('boom')")


def test_a_deferral_backs_off_and_the_last_attempt_is_not_rescheduled(
    make_run: MakeRun,
) -> None:
    run = make_run(NEWSLETTER_MAX_ATTEMPTS="3", NEWSLETTER_RETRY_BASE_SECONDS="2")
    delays = []
    for attempt in range(3):
        start, mono = utcnow(), time.monotonic()
        take(run, 5, GREY)
        result = run.recorder.buffer[-1]
        assert (
            result.subscriber_id == 5
            and result.outcome == GREY
            and result.message_id == "<5@example.com>"
        )
        assert result.retry_at is not None
        delay = 2.0 * 2**attempt
        assert start + timedelta(seconds=delay) <= result.retry_at
        assert result.retry_at <= utcnow() + timedelta(seconds=delay)
        delays.append(delay)
        if attempt < 2:
            due, sid = max(run.claims.retry_heap)
            assert sid == 5
            assert mono + delay <= due <= time.monotonic() + delay
    assert [sid for _, sid in sorted(run.claims.retry_heap)] == [5, 5]  # attempts 1 and 2
    assert (run.stats.retries, run.stats.exhausted) == (3, 1)
    assert run.stats.last_retry_text == "451 4.7.1 greylisted"
    assert run.run_attempts == {5: 3}
    take(run, 6, GREY)
    assert run.run_attempts == {5: 3, 6: 1}
    take(run, 6, GREY)
    take(run, 6, GREY)
    assert (run.run_attempts, run.stats.exhausted, run.stats.retries) == ({5: 3, 6: 3}, 2, 6)
    assert run.consecutive_drops == 0  # a 451 is the server talking, not a dropped line


def test_backoff_doubles_up_to_five_minutes(make_run: MakeRun) -> None:
    run = make_run(NEWSLETTER_RETRY_BASE_SECONDS="3")
    assert [run._backoff(n) for n in (1, 2, 3, 7, 8, 20)] == [3.0, 6.0, 12.0, 192.0, 300.0, 300.0]


def test_dropped_connections_throttle_then_give_up(make_run: MakeRun) -> None:
    # Two connections: the threshold is 2 * 2 + 2 = 6 drops in a row.
    run = make_run(concurrency=2, NEWSLETTER_MAX_ATTEMPTS="3", NEWSLETTER_RETRY_BASE_SECONDS="2")
    sid = iter(range(1000))
    for _ in range(5):
        take(run, next(sid), DROPPED)
    assert (run.throttles, run.throttle_until) == (0, 0.0)
    before = time.monotonic()
    take(run, next(sid), SendOutcome(Outcome.RETRY, 421, "4.3.2 shutting down"))  # a drop too
    assert run.throttles == 1
    assert before + 2.0 <= run.throttle_until <= time.monotonic() + 2.0
    for _ in range(5):
        take(run, next(sid), DROPPED)
    assert run.throttles == 1
    before = time.monotonic()
    take(run, next(sid), DROPPED)
    assert run.throttles == 2
    assert before + 4.0 <= run.throttle_until <= time.monotonic() + 4.0
    assert run.stats.halt is None
    for _ in range(5):
        take(run, next(sid), DROPPED)
    assert run.stats.halt is None
    take(run, next(sid), DROPPED)
    assert (run.stats.halt, run.stats.reason) == (
        "unreachable",
        "the mail server keeps failing: connection reset by peer",
    )
    assert run.stats.retries == 18


def test_drops_in_a_row_only_count_until_a_delivery(make_run: MakeRun) -> None:
    run = make_run(concurrency=1)  # threshold 2 * 1 + 2 = 4
    for sid in range(3):
        take(run, sid, DROPPED)
    take(run, 3, GREY)  # not a drop, and not a reset either
    take(run, 4, DROPPED)
    assert run.throttles == 1
    for sid in range(5, 8):
        take(run, sid, DROPPED)
    take(run, 8, SENT)
    take(run, 9, DROPPED)
    assert (run.throttles, run.consecutive_drops) == (0, 1)


# -- building and pushing -------------------------------------------------------------


def test_a_message_that_cannot_be_built_fails_without_being_pushed(make_run: MakeRun) -> None:
    run = make_run()
    run._push(Job(3, "bad@example.org", "Bad"))
    assert run.stats.failed == 1
    assert run.recorder.buffer == [
        Result(
            3,
            SendOutcome(
                Outcome.FAILED,
                None,
                "cannot build the message: no message can carry 'bad@example.org'",
            ),
        )
    ]
    assert run.pusher.outstanding == 0
    run._push(Job(5, "bad-too@example.org", "Bad"))
    assert (run.stats.failed, len(run.recorder.buffer)) == (2, 2)
    run._push(Job(4, "good@example.org", "Good"))
    assert run.pusher.outstanding == 1
    assert run.pusher.jobs.get_nowait() == (
        Job(4, "good@example.org", "Good"),
        Built("<4@example.com>", b"To: Good <good@example.org>\r\n\r\nHi\r\n"),
    )


def test_the_window_is_eight_messages_per_connection_at_least_sixteen(
    make_run: MakeRun,
) -> None:
    for concurrency, window in ((1, 16), (2, 16), (3, 24)):
        pusher = make_run(concurrency=concurrency).pusher
        assert (pusher.window, pusher.outstanding) == (window, 0)
        for sid in range(window - 1):
            pusher.push(job(sid), build(sid, "a@b.c", "A"))
        assert pusher.has_room
        pusher.push(job(99), build(99, "a@b.c", "A"))
        assert not pusher.has_room
        assert [t.name for t in pusher.threads] == [f"smtp-{i}" for i in range(concurrency)]
        assert all(t.daemon for t in pusher.threads)


def test_workers_send_with_the_verp_envelope_and_hand_back_errors(make_run: MakeRun) -> None:
    sink = Sink(1)
    run = make_run(transport=sink)
    pusher = run.pusher
    pusher.start()
    plain = build(1, "one@example.org", "One")
    verp = VerpBuilt("<2@x>", b"two", "bounce+2@example.com")
    assert pusher.take(timeout=0.01) == []  # nothing in flight: back after the timeout
    pusher.push(job(1), plain)
    pusher.push(job(2), verp)
    for _ in range(500):  # both outcomes in: one take hands them over together
        if pusher.results.qsize() == 2:
            break
        time.sleep(0.01)
    got = pusher.take(timeout=5)
    sink.answer = RuntimeError("socket gone")
    pusher.push(job(3), plain)
    failed = pusher.take(timeout=5)
    pusher.stop()
    pusher.join()
    assert got == [(job(1), plain, SENT), (job(2), verp, SENT)]
    assert sink.calls == [
        ("news@example.com", "reader1@example.org", plain.data),
        ("bounce+2@example.com", "reader2@example.org", b"two"),
        ("news@example.com", "reader3@example.org", plain.data),
    ]
    assert len(failed) == 1 and failed[0][:2] == (job(3), plain)
    assert isinstance(failed[0][2], RuntimeError) and str(failed[0][2]) == "socket gone"
    assert pusher.outstanding == 0


def test_workers_hand_jobs_back_unsent_once_halted(make_run: MakeRun) -> None:
    sink = Sink(1)
    run = make_run(transport=sink)
    run.halts.halt("stop", "stopped on request")
    run.pusher.start()
    run.pusher.push(job(1), build(1, "a@b.c", "A"))
    got = run.pusher.take(timeout=5)
    run.pusher.stop()
    run.pusher.join()
    assert got == [(job(1), build(1, "a@b.c", "A"), None)]
    assert sink.calls == []


def test_workers_wait_for_the_shared_send_rate(make_run: MakeRun) -> None:
    sink = Sink(1)
    run = make_run(transport=sink, NEWSLETTER_SEND_RATE="1000")
    run.pusher.start()
    run.pusher.push(job(1), build(1, "a@b.c", "A"))
    got = run.pusher.take(timeout=5)
    run.pusher.stop()
    run.pusher.join()
    assert got == [(job(1), build(1, "a@b.c", "A"), SENT)]


def test_a_stopped_pusher_sends_nothing_more(make_run: MakeRun) -> None:
    sink = Sink(2)
    pusher: Pusher = make_run(transport=sink).pusher
    pusher.start()
    pusher.stop()
    pusher.join()
    assert not any(t.is_alive() for t in pusher.threads)
    assert sink.calls == []


# -- claiming -----------------------------------------------------------------------


def test_claim_more_takes_one_batch_and_counts_the_skipped(make_run: MakeRun) -> None:
    run = make_run(12, NEWSLETTER_BATCH_SIZE="5")
    ctx, issue = run.ctx, run.issue_id
    ids = sorted(delivery_rows(ctx, issue))
    with ctx.db.write() as session:
        session.execute(
            update(Subscriber)
            .where(Subscriber.id.in_(ids[1:3]))
            .values(status=SubscriberStatus.UNSUBSCRIBED)
        )
    run._claim_more()
    assert [j.subscriber_id for j in run.claims.pending] == [ids[0], ids[3], ids[4]]
    assert run.stats.skipped == 2
    assert run.claims.cursor == ids[4]
    run._claim_more()  # something is pending: nothing more is claimed
    assert len(run.claims.pending) == 3
    run.claims.pending.clear()
    run._claim_more()
    assert [j.subscriber_id for j in run.claims.pending] == ids[5:10]
    assert run.stats.skipped == 2
    rows = delivery_rows(ctx, issue)
    assert [rows[s][0] for s in ids] == ["sending", "skipped", "skipped"] + ["sending"] * 7 + [
        "queued",
        "queued",
    ]
    assert {rows[s][2] for s in ids[:10] if rows[s][0] == "sending"} == {run.sender}


def test_claim_more_after_the_keyset_ends_waits_for_retries(make_run: MakeRun) -> None:
    run = make_run(2, NEWSLETTER_RETRY_BASE_SECONDS="60")
    ids = sorted(delivery_rows(run.ctx, run.issue_id))
    run._claim_more()
    assert [j.subscriber_id for j in run.claims.pending] == ids
    first = run.claims.pending.popleft()
    run.claims.pending.clear()
    take(run, first.subscriber_id, GREY)  # deferred a minute, outcome not yet written
    run._claim_more()  # the keyset sweeps once more and ends: nothing is queued
    assert run.claims.keyset_done and not run.claims.pending
    run.claims.retry_heap.clear()
    run.claims.defer(first.subscriber_id, 0.0)  # the minute is up
    run._claim_more()  # the retry is due: its outcome is written first, then it is claimed
    assert list(run.claims.pending) == [Job(ids[0], "reader000000@example.org", "Reader 0")]
    assert delivery_rows(run.ctx, run.issue_id)[ids[0]] == ("sending", 1, run.sender)
    run.claims.pending.clear()
    run._claim_more()
    assert not run.claims.pending and run.stats.halt is None


def test_claim_more_halts_on_a_cancelled_issue(make_run: MakeRun) -> None:
    run = make_run(3)
    set_issue(run.ctx, run.issue_id, IssueStatus.CANCELLED)
    run._claim_more()
    assert (run.stats.halt, run.stats.reason) == ("cancelled", "the issue is now cancelled")
    assert not run.claims.pending


def test_claim_more_stops_at_the_daily_limit(make_run: MakeRun) -> None:
    run = make_run(6, NEWSLETTER_DAILY_LIMIT="3")
    run._claim_more()
    assert len(run.claims.pending) == 3
    pending = run.claims.pending.popleft()
    run.pusher.push(pending, build(pending.subscriber_id, pending.email, pending.name))
    run.claims.pending.clear()
    run._claim_more()  # one in flight: let it finish before stopping
    assert run.stats.halt is None and not run.claims.pending
    run.pusher.outstanding = 0  # it came back
    run._claim_more()
    assert (run.stats.halt, run.stats.reason) == (
        "quota",
        "daily limit of 3 messages reached; the rest stay queued until tomorrow (00:00 UTC)",
    )


# -- renewing, taking back, recording --------------------------------------------------


def test_renew_pushes_this_senders_claims_and_takes_back_dead_ones(make_run: MakeRun) -> None:
    run = make_run(4, NEWSLETTER_LEASE_SECONDS="60")
    ctx, issue = run.ctx, run.issue_id
    ids = sorted(delivery_rows(ctx, issue))
    with ctx.db.write() as session:
        ledger.claim_next(session, issue, 0, 1, Claimant("far:1:x", utcnow() - timedelta(1)))
        ledger.claim_next(session, issue, ids[0], 1, Claimant("far:2:y", utcnow() + timedelta(1)))
    run.claims.claim([])
    assert run.claims.cursor == ids[3]
    with ctx.db.write() as session:  # our claims, about to run out
        ledger.renew_claims(session, issue, Claimant(run.sender, utcnow() + timedelta(seconds=1)))
    before = utcnow()
    run.claims.renew()
    after = utcnow()
    with ctx.db.read() as session:
        query = select(Delivery.subscriber_id, Delivery.claim_expires_at)
        expiry = {sid: at for sid, at in session.execute(query.where(Delivery.issue_id == issue))}
    for sid in ids[2:]:
        assert before + timedelta(seconds=60) <= expiry[sid] <= after + timedelta(seconds=60)
    rows = delivery_rows(ctx, issue)
    assert rows[ids[0]] == ("queued", 0, None)  # expired: taken back
    assert rows[ids[1]] == ("sending", 0, "far:2:y")  # live: left alone
    assert (run.claims.cursor, run.claims.keyset_done, run.claims.swept) == (0, False, False)


def test_take_back_frees_the_rows_of_a_dead_local_sender(
    make_run: MakeRun, caplog: pytest.LogCaptureFixture
) -> None:
    me_gone, other_gone = dead_pid(), dead_pid()
    run = make_run(4, pid=me_gone)  # the pid in our own claims is not alive either
    ctx, issue = run.ctx, run.issue_id
    ids = sorted(delivery_rows(ctx, issue))
    live = utcnow() + timedelta(minutes=5)
    dead_one = f"{HOST}:{other_gone}:zzz"
    with ctx.db.write() as session:
        ledger.claim_next(session, issue, 0, 2, Claimant(dead_one, live))
        ledger.claim_next(session, issue, ids[1], 1, Claimant(f"far:{other_gone}:q", live))
    run.claims.claim([])
    assert run.claims.cursor == ids[3]
    with caplog.at_level(logging.WARNING, logger="newsletter.delivery.engine"):
        assert run.claims.take_back() == 2  # a process of this host that exited: not waited for
    assert [r.getMessage() for r in caplog.records] == [
        f"issue {issue}: took back 2 rows of senders that died"
    ]
    rows = delivery_rows(ctx, issue)
    assert [rows[s] for s in ids] == [
        ("queued", 0, None),
        ("queued", 0, None),
        ("sending", 0, f"far:{other_gone}:q"),  # another machine's: only expiry frees it
        ("sending", 0, run.sender),
    ]
    assert (run.claims.cursor, run.claims.keyset_done) == (0, False)
    run.claims.cursor, run.claims.keyset_done = ids[3], True
    assert run.claims.take_back() == 0  # nobody dead now: nothing taken, nothing reopened
    assert (run.claims.cursor, run.claims.keyset_done) == (ids[3], True)
    assert run.claims.others_working()


def test_take_back_of_expired_claims_without_a_dead_sender(make_run: MakeRun) -> None:
    run = make_run(2)
    ctx, issue = run.ctx, run.issue_id
    ids = sorted(delivery_rows(ctx, issue))
    with ctx.db.write() as session:
        ledger.claim_next(session, issue, 0, 1, Claimant("far:1:x", utcnow() - timedelta(1)))
    run.claims.claim([])  # ids[1] is ours now; ids[0] is an expired claim of another
    assert run.claims.cursor == ids[1]
    assert not run.claims.others_working()  # our own claims do not count
    assert run.claims.take_back() == 1
    assert delivery_rows(ctx, issue)[ids[0]] == ("queued", 0, None)
    assert delivery_rows(ctx, issue)[ids[1]] == ("sending", 0, run.sender)
    assert run.claims.cursor == 0


def test_an_idle_sender_stays_while_others_hold_rows(make_run: MakeRun) -> None:
    run = make_run(3)
    ctx, issue = run.ctx, run.issue_id
    ids = sorted(delivery_rows(ctx, issue))
    with ctx.db.write() as session:
        ledger.claim_next(session, issue, 0, 1, Claimant("far:1:x", utcnow() - timedelta(1)))
        ledger.claim_next(session, issue, ids[0], 1, Claimant("far:2:y", utcnow() + timedelta(1)))
    run.claims.cursor, run.claims.keyset_done = ids[2], True
    assert run._others_may_need_us()  # an expired claim: taken back, worth another pass
    assert delivery_rows(ctx, issue)[ids[0]] == ("queued", 0, None)
    assert (run.claims.cursor, run.claims.keyset_done) == (0, False)
    run.claims.cursor, run.claims.keyset_done = ids[2], True
    assert run._others_may_need_us()  # far:2:y is alive: wait, then look again
    assert (run.claims.cursor, run.claims.keyset_done) == (0, False)
    with ctx.db.write() as session:
        session.execute(
            update(Delivery)
            .where(Delivery.issue_id == issue, Delivery.subscriber_id == ids[1])
            .values(status=DeliveryStatus.SENT)
        )
    run.claims.cursor, run.claims.keyset_done = ids[2], True
    assert not run._others_may_need_us()  # nobody else: done
    assert (run.claims.cursor, run.claims.keyset_done) == (ids[2], True)


def test_feed_pushes_at_most_a_window_ahead(make_run: MakeRun) -> None:
    run = make_run(40, concurrency=1)  # window 16; the workers are not started
    run._feed()
    assert (run.pusher.outstanding, len(run.claims.pending)) == (16, 24)
    assert [run.pusher.jobs.get_nowait()[0].subscriber_id for _ in range(16)] == sorted(
        delivery_rows(run.ctx, run.issue_id)
    )[:16]
    run.pusher.outstanding = 10  # six outcomes came back
    run._feed()
    assert (run.pusher.outstanding, len(run.claims.pending)) == (16, 18)
    run.pusher.outstanding = 0
    run.halts.halt("pause", "policy")
    run._feed()
    assert (run.pusher.outstanding, len(run.claims.pending)) == (0, 18)


def test_flush_writes_the_batch_reports_progress_and_reads_the_status(
    make_run: MakeRun,
) -> None:
    reports: list[Progress] = []
    run = make_run(3, progress=reports.append, NEWSLETTER_MAX_ATTEMPTS="1")
    ctx, issue = run.ctx, run.issue_id
    ids = sorted(delivery_rows(ctx, issue))
    run._claim_more()
    assert run.recorder.give_up_after == 3  # max_attempts * RUNS_BEFORE_FAILING
    for attempt in range(3):
        take(run, ids[0], GREY)
        run.recorder.flush()
        assert delivery_rows(ctx, issue)[ids[0]][:2] == (
            ("queued", attempt + 1) if attempt < 2 else ("failed", 3)
        )
    assert len(reports) == 3 and reports[-1].total == 0  # before run(): no base counts
    assert run.recorder.buffer == []
    assert not run.recorder.due(run.recorder.last_flush)
    take(run, ids[1], SENT)
    run.recorder.flush()
    assert delivery_rows(ctx, issue)[ids[1]][0] == "sent"
    assert reports[-1].sent == 1 and len(reports) == 4
    run.recorder.flush()  # nothing new: no progress report
    assert len(reports) == 4 and run.stats.halt is None
    set_issue(ctx, issue, IssueStatus.PAUSED)
    run.recorder.flush()
    assert (run.stats.halt, run.stats.reason) == ("cancelled", "the issue is now paused")


def test_recorder_due_after_a_batch_or_a_quiet_half_second(make_run: MakeRun) -> None:
    run = make_run()
    rec = run.recorder
    t = rec.last_flush
    assert not rec.due(t + 0.3)
    assert rec.due(t + 0.6)  # idle: read the issue's status at least twice a second
    take(run, 1, SENT)
    assert not rec.due(t + 0.05)
    assert rec.due(t + 0.15)
    for sid in range(2, 101):
        take(run, sid, SENT)
    assert rec.due(t)  # a full batch does not wait


def test_run_settings_are_taken_from_the_configuration(make_run: MakeRun) -> None:
    run = make_run(concurrency=3, NEWSLETTER_LEASE_SECONDS="40", NEWSLETTER_MAX_ATTEMPTS="4")
    assert (run.renew_every, run.max_attempts, run.concurrency) == (10.0, 4, 3)
    assert (run.claims.batch_size, run.claims.ttl) == (500, timedelta(seconds=40))
    assert run.sender == f"{HOST}:{os.getpid()}:0123456789ab"
    assert run.recorder.sender == run.sender
    assert (run.failure_streak, run.consecutive_drops, run.throttles) == (0, 0, 0)


# -- the claim cursor and the retry heap ------------------------------------------------


def test_due_retries_beyond_the_daily_allowance_go_back_due_at_once(make_run: MakeRun) -> None:
    run = make_run(5, NEWSLETTER_DAILY_LIMIT="2")
    ids = sorted(delivery_rows(run.ctx, run.issue_id))
    got = run.claims.claim(ids[:3])
    assert isinstance(got, ledger.Claim)
    assert [j.subscriber_id for j in got.jobs] == ids[:2]
    assert run.claims.cursor == 0  # due retries do not move the keyset
    assert [sid for _, sid in run.claims.retry_heap] == [ids[2]]
    assert run.claims.retry_heap[0][0] <= time.monotonic()
    assert run.claims.due_retries() == [ids[2]]
    refused = run.claims.claim([ids[2], ids[3]])
    assert not isinstance(refused, ledger.Claim)
    assert (refused.count, refused.reason) == (
        0,
        "daily limit of 2 messages reached; the rest stay queued until tomorrow (00:00 UTC)",
    )
    assert sorted(sid for _, sid in run.claims.retry_heap) == [ids[2], ids[3]]
    assert all(due <= time.monotonic() for due, _ in run.claims.retry_heap)
    assert [delivery_rows(run.ctx, run.issue_id)[s][0] for s in ids] == [
        "sending",
        "sending",
        "queued",
        "queued",
        "queued",
    ]


def test_due_retries_come_earliest_first_one_batch_at_a_time(make_run: MakeRun) -> None:
    run = make_run(NEWSLETTER_BATCH_SIZE="2")
    claims = run.claims
    claims.defer(30, 0.0)
    claims.defer(10, -2.0)
    claims.defer(20, -1.0)
    claims.defer(40, 3600.0)
    assert claims.due_retries() == [10, 20]
    assert claims.due_retries() == [30]
    assert claims.due_retries() == []
    assert [sid for _, sid in claims.retry_heap] == [40]


def test_next_due_and_idle(make_run: MakeRun) -> None:
    claims = make_run().claims
    assert (claims.next_due(), claims.idle) == (0.0, False)  # the keyset is still open
    claims.keyset_done = True
    assert (claims.next_due(), claims.idle) == (0.0, True)
    claims.defer(1, 60.0)
    due = claims.retry_heap[0][0]
    assert (claims.next_due(), claims.idle) == (due, False)
    claims.pending.append(job(2))
    assert (claims.next_due(), claims.idle) == (0.0, False)
    claims.pending.clear()
    claims.keyset_done = False
    assert claims.next_due() == 0.0


def test_the_keyset_ends_after_one_more_pass_from_the_start(make_run: MakeRun) -> None:
    claims = make_run().claims
    assert (claims.keyset_done, claims.swept, claims.cursor) == (False, False, 0)
    assert (claims.pending, claims.retry_heap) == (deque(), [])
    claims._end_of_keyset()  # it started at the beginning: nothing behind it
    assert (claims.keyset_done, claims.swept, claims.cursor) == (True, False, 0)
    claims.reopen()
    assert (claims.keyset_done, claims.swept, claims.cursor) == (False, False, 0)
    claims.cursor = 7
    claims._end_of_keyset()
    assert (claims.keyset_done, claims.swept, claims.cursor) == (False, True, 0)
    claims.cursor = 9
    claims._end_of_keyset()
    assert (claims.keyset_done, claims.swept, claims.cursor) == (True, True, 9)


def test_the_claimant_signs_with_the_sender_and_the_lease(make_run: MakeRun) -> None:
    claims = make_run(NEWSLETTER_LEASE_SECONDS="45").claims
    before = utcnow()
    who = claims.claimant()
    assert who.sender == claims.sender
    assert before + timedelta(seconds=45) <= who.expires_at <= utcnow() + timedelta(seconds=45)


def test_the_first_halt_wins(make_run: MakeRun) -> None:
    run = make_run()
    assert not run.halts.halted and not run.halts.cancel.is_set()
    run.halts.halt("pause", "first")
    run.halts.halt("error", "second")
    assert (run.stats.halt, run.stats.reason, run.halts.halted) == ("pause", "first", True)
    assert run.halts.cancel.is_set()


# -- stopping -----------------------------------------------------------------------


class StoppingSink(Sink):
    """Sets the run's stop event on the first message (Ctrl-C in the terminal)."""

    def __init__(self, stop: threading.Event) -> None:
        super().__init__(1)
        self.stop = stop

    def send(self, envelope_from: str, recipient: str, data: bytes) -> SendOutcome:
        self.stop.set()
        return super().send(envelope_from, recipient, data)


def test_a_stop_request_releases_every_claimed_row_not_sent(make_run: MakeRun) -> None:
    stop = threading.Event()
    sink = StoppingSink(stop)
    run = make_run(40, transport=sink, stop=stop)
    stats = run.run()
    assert (stats.halt, stats.reason) == ("stop", "stopped on request")
    rows = delivery_rows(run.ctx, run.issue_id)
    sent = sorted(sid for sid, row in rows.items() if row[0] == "sent")
    assert len(sent) == stats.sent == len(sink.calls) >= 1
    assert {row for sid, row in rows.items() if sid not in sent} == {("queued", 0, None)}


def test_a_run_stopped_before_it_starts_sends_nothing(make_run: MakeRun) -> None:
    stop = threading.Event()
    stop.set()
    sink = Sink(1)
    run = make_run(3, transport=sink, stop=stop)
    stats = run.run()
    assert (stats.halt, stats.reason, stats.sent) == ("stop", "stopped on request", 0)
    assert sink.calls == []
    assert set(delivery_rows(run.ctx, run.issue_id).values()) == {("queued", 0, None)}


def test_recorder_flushes_only_after_more_than_its_intervals(make_run: MakeRun) -> None:
    from newsletter.delivery.engine import FLUSH_SECONDS, STATUS_SECONDS

    rec = make_run().recorder
    rec.last_flush = rec.last_status = 0.0
    assert not rec.due(STATUS_SECONDS)  # idle, and exactly half a second: not yet
    assert rec.due(STATUS_SECONDS + 0.25)
    rec.buffer.append(Result(1, None))
    assert not rec.due(FLUSH_SECONDS)  # exactly the interval: not yet
    assert rec.due(FLUSH_SECONDS + 0.25)
