"""The issue lifecycle (delivery.send) with exact states, reasons and messages.

Mail goes to the Maildir outbox (no NEWSLETTER_SMTP_URL) or to a real aiosmtpd
server; states are read back from the test's own database.  A ``stop`` event set
before the run ends it before the first claim, so the reasons are exact.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from _delivery_support import (
    HTML,
    TEXT,
    FaultHandler,
    add_subscribers,
    email_for,
    issue_row,
    make_issue,
)
from aiosmtpd.smtp import SMTP, Session
from conftest import RecordingHandler, SMTPServer, start_smtp
from sqlalchemy import select, update

from newsletter.context import Context
from newsletter.delivery import ledger
from newsletter.delivery import send as delivery
from newsletter.delivery.engine import Progress, RunStats
from newsletter.delivery.outbox import MaildirOutbox
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Issue,
    IssueStatus,
    IssueVariant,
    Subscriber,
    SubscriberStatus,
    utcnow,
)
from newsletter.subscribers.preferences import encode_sections

FAST = {"NEWSLETTER_RETRY_BASE_SECONDS": "0.01", "NEWSLETTER_BATCH_SIZE": "7"}


@pytest.fixture
def open_ctx(open_context: Callable[..., Context]) -> Callable[..., Context]:
    return lambda **overrides: open_context(**{**FAST, **overrides})


def stopped() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


def set_issue(ctx: Context, issue_id: int, **values: Any) -> None:
    with ctx.db.write() as session:
        session.execute(update(Issue).where(Issue.id == issue_id).values(**values))


def fail_some(ctx: Context, issue_id: int, n: int) -> None:
    """Leave the issue as a finished run with ``n`` permanent failures would."""
    with ctx.db.write() as session:
        sids = list(
            session.scalars(
                select(Delivery.subscriber_id)
                .where(Delivery.issue_id == issue_id)
                .order_by(Delivery.subscriber_id)
                .limit(n)
            )
        )
        session.execute(
            update(Delivery)
            .where(Delivery.issue_id == issue_id, Delivery.subscriber_id.in_(sids))
            .values(status=DeliveryStatus.FAILED, last_response="554 5.6.0 rejected")
        )
    set_issue(ctx, issue_id, status=IssueStatus.SENT, status_reason=f"{n} deliveries failed")


def outbox_files(ctx: Context) -> int:
    new = Path(ctx.settings.outbox) / "new"
    return len(list(new.iterdir())) if new.is_dir() else 0


# --- active_count ----------------------------------------------------------------


def test_active_count_counts_active_readers_only(ctx: Context) -> None:
    with ctx.db.read() as session:
        assert delivery.active_count(session) == 0
    add_subscribers(ctx, 3)
    add_subscribers(ctx, 2, SubscriberStatus.PENDING, start=100)
    add_subscribers(ctx, 4, SubscriberStatus.UNSUBSCRIBED, start=200)
    with ctx.db.read() as session:
        assert delivery.active_count(session) == 3


# --- refusals: exact messages --------------------------------------------------------


def test_send_issue_refuses_a_sent_issue_as_already_finished(ctx: Context) -> None:
    add_subscribers(ctx, 2)
    issue_id = make_issue(ctx)
    assert delivery.send_issue(ctx, issue_id).ok
    with pytest.raises(delivery.AlreadyFinished) as caught:
        delivery.send_issue(ctx, issue_id)
    assert str(caught.value) == f"issue {issue_id} is sent: nothing to send"


def test_send_issue_refuses_a_cancelled_issue_but_not_as_finished(ctx: Context) -> None:
    add_subscribers(ctx, 2)
    issue_id = make_issue(ctx)
    with ctx.db.write() as session:
        delivery.cancel(session, issue_id)
    with pytest.raises(delivery.IssueStateError) as caught:
        delivery.send_issue(ctx, issue_id)
    assert not isinstance(caught.value, delivery.AlreadyFinished)
    assert str(caught.value) == f"issue {issue_id} is cancelled: nothing to send"
    with pytest.raises(delivery.IssueStateError) as again:
        delivery.resume(ctx, issue_id)
    assert str(again.value) == f"issue {issue_id} is cancelled: nothing to send"
    assert outbox_files(ctx) == 0


def test_send_issue_refuses_a_paused_issue_naming_the_cause(ctx: Context) -> None:
    add_subscribers(ctx, 2)
    issue_id = make_issue(ctx)
    set_issue(ctx, issue_id, status=IssueStatus.PAUSED, status_reason="554 5.7.1 blocked")
    with pytest.raises(delivery.IssueStateError) as caught:
        delivery.send_issue(ctx, issue_id)
    assert not isinstance(caught.value, delivery.AlreadyFinished)
    assert str(caught.value) == (
        f"issue {issue_id} is paused: 554 5.7.1 blocked. Fix the cause, then run "
        f"'newsletter issues resume {issue_id}'"
    )


def test_a_missing_issue_is_named(ctx: Context) -> None:
    for call in (delivery.send_issue, delivery.resume, delivery.retry_failed):
        with pytest.raises(delivery.IssueStateError) as caught:
            call(ctx, 4242)
        assert str(caught.value) == "there is no issue 4242"
    with ctx.db.write() as session, pytest.raises(delivery.IssueStateError) as cancelling:
        delivery.cancel(session, 4242)
    assert str(cancelling.value) == "there is no issue 4242"


# --- send_issue and _finish ---------------------------------------------------------


def test_send_issue_records_start_once_and_finish(ctx: Context) -> None:
    add_subscribers(ctx, 3)
    issue_id = make_issue(ctx, "Exact subject")
    summary = delivery.send_issue(ctx, issue_id, stop=stopped())
    first = issue_row(ctx, issue_id)
    assert first.started_at is not None and first.finished_at is None
    assert summary.status is IssueStatus.SENDING and summary.run.halt == "stop"
    assert summary.reason == "3 deliveries still queued (stopped on request)"
    assert summary.counts[DeliveryStatus.QUEUED] == 3 and summary.left_queued == 3
    assert summary.next_retry is None  # never tried: nothing planned
    done = delivery.send_issue(ctx, issue_id)
    after = issue_row(ctx, issue_id)
    assert after.started_at == first.started_at  # the first run's start is kept
    assert after.finished_at is not None and after.finished_at >= after.started_at
    assert (done.issue_id, done.subject, done.status, done.reason) == (
        issue_id,
        "Exact subject",
        IssueStatus.SENT,
        None,
    )
    assert done.counts == {
        DeliveryStatus.QUEUED: 0,
        DeliveryStatus.SENDING: 0,
        DeliveryStatus.SENT: 3,
        DeliveryStatus.FAILED: 0,
        DeliveryStatus.BOUNCED: 0,
        DeliveryStatus.SKIPPED: 0,
    }
    assert done.run.sent == 3 and done.total == 3 and done.next_retry is None
    assert outbox_files(ctx) == 3


def test_rows_another_live_sender_holds_count_as_left(ctx: Context) -> None:
    add_subscribers(ctx, 10)
    issue_id = make_issue(ctx)
    with ctx.db.write() as session:  # a sender on another machine holds 7 rows
        # (20 s: long enough to be live throughout, short enough that a run which
        # ignored ``stop`` and waited for them would fail this test soon)
        other = ledger.Claimant(
            "mailer-2.example:4242:feedfacecafe", utcnow() + timedelta(seconds=20)
        )
        assert len(ledger.claim_next(session, issue_id, 0, 7, other).jobs) == 7
    with ctx.db.read() as session:
        assert delivery.other_senders(session, issue_id) == [("mailer-2.example", "4242", 7)]
    summary = delivery.send_issue(ctx, issue_id, stop=stopped())
    assert summary.counts[DeliveryStatus.QUEUED] == 3
    assert summary.counts[DeliveryStatus.SENDING] == 7
    assert summary.left_queued == 10
    assert summary.status is IssueStatus.SENDING
    assert summary.reason == "10 deliveries still queued (stopped on request)"


def test_other_senders_lists_each_live_sender_sorted(ctx: Context) -> None:
    add_subscribers(ctx, 6)
    issue_id = make_issue(ctx)
    soon = utcnow() + timedelta(minutes=5)
    with ctx.db.write() as session:
        b = ledger.Claimant("b.example:7:0123456789ab", soon)
        a = ledger.Claimant("a.example:12:ba9876543210", soon)
        gone = ledger.Claimant("c.example:9:cafecafecafe", utcnow() - timedelta(seconds=1))
        last = ledger.claim_next(session, issue_id, 0, 3, b).jobs[-1].subscriber_id
        last = ledger.claim_next(session, issue_id, last, 2, a).jobs[-1].subscriber_id
        ledger.claim_next(session, issue_id, last, 1, gone)
    with ctx.db.read() as session:
        assert delivery.other_senders(session, issue_id) == [
            ("a.example", "12", 2),
            ("b.example", "7", 3),
        ]
        assert delivery.other_senders(session, issue_id + 1) == []


def test_reason_names_the_last_error_when_retries_ran_out(
    open_ctx: Callable[..., Context],
) -> None:
    server = start_smtp(FaultHandler(greylist={email_for(1)}, grey_times=9))
    try:
        ctx = open_ctx(NEWSLETTER_SMTP_URL=server.url, NEWSLETTER_MAX_ATTEMPTS="2")
        add_subscribers(ctx, 3)
        issue_id = make_issue(ctx)
        summary = delivery.send_issue(ctx, issue_id)
    finally:
        server.controller.stop()
    assert summary.run.halt is None and summary.run.exhausted == 1
    assert summary.status is IssueStatus.SENDING
    assert summary.reason == (
        "1 deliveries still queued (last error: 451 4.7.1 Greylisted, please try again later)"
    )
    assert summary.next_retry is not None
    assert summary.counts[DeliveryStatus.SENT] == 2
    assert not summary.ok


def test_failures_are_counted_in_the_reason_of_a_sent_issue(ctx: Context) -> None:
    add_subscribers(ctx, 4)
    issue_id = make_issue(ctx)
    with ctx.db.write() as session:
        session.execute(
            update(Delivery)
            .where(Delivery.issue_id == issue_id)
            .values(status=DeliveryStatus.FAILED)
        )
    summary = delivery.send_issue(ctx, issue_id)
    assert summary.status is IssueStatus.SENT and summary.reason == "4 deliveries failed"
    assert summary.left_queued == 0 and summary.next_retry is None and not summary.ok


class QuitCounter(RecordingHandler):
    def __init__(self) -> None:
        super().__init__()
        self.quits = 0

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Any) -> str:
        self.quits += 1
        return "221 Bye"


def test_send_issue_closes_the_transport_it_opened(open_ctx: Callable[..., Context]) -> None:
    handler = QuitCounter()
    server = start_smtp(handler)
    try:
        ctx = open_ctx(NEWSLETTER_SMTP_URL=server.url, NEWSLETTER_SMTP_CONNECTIONS="1")
        add_subscribers(ctx, 2)
        assert delivery.send_issue(ctx, make_issue(ctx)).ok
        assert handler.quits == 1  # the pool was closed: QUIT on its one connection
    finally:
        server.controller.stop()


class CallersOutbox(MaildirOutbox):
    """A caller's own outbox that says whether it was closed."""

    closed = False

    def close(self) -> None:
        self.closed = True
        super().close()


def test_send_issue_leaves_a_callers_transport_open(
    ctx: Context, smtp_server: SMTPServer, tmp_path: Path
) -> None:
    add_subscribers(ctx, 2)
    outbox = CallersOutbox(tmp_path / "callers")
    assert delivery.send_issue(ctx, make_issue(ctx), transport=outbox).ok
    assert outbox.closed is False  # the caller's to close
    assert len(list((tmp_path / "callers" / "new").iterdir())) == 2
    assert outbox_files(ctx) == 0


# --- resume_unfinished -----------------------------------------------------------------


def test_resume_unfinished_sends_every_sending_issue_in_order(ctx: Context) -> None:
    add_subscribers(ctx, 2)
    first = make_issue(ctx, "First")
    paused = make_issue(ctx, "Paused")
    set_issue(ctx, paused, status=IssueStatus.PAUSED, status_reason="554 blocked")
    second = make_issue(ctx, "Second")
    # rewritten after the others: on PostgreSQL its row now comes last in a table scan
    set_issue(ctx, first, status_reason=None)
    seen: list[Progress] = []
    summaries = delivery.resume_unfinished(ctx, progress=seen.append)
    assert [(s.issue_id, s.status) for s in summaries] == [
        (first, IssueStatus.SENT),
        (second, IssueStatus.SENT),
    ]
    assert seen and seen[-1].sent == 2 and seen[-1].total == 2
    assert issue_row(ctx, paused).status is IssueStatus.PAUSED  # waits for a person
    assert outbox_files(ctx) == 4


def test_resume_unfinished_passes_the_stop_event(ctx: Context) -> None:
    add_subscribers(ctx, 3)
    issue_id = make_issue(ctx)
    [summary] = delivery.resume_unfinished(ctx, stop=stopped())
    assert summary.run.halt == "stop" and summary.status is IssueStatus.SENDING
    assert summary.reason == "3 deliveries still queued (stopped on request)"
    assert outbox_files(ctx) == 0
    assert issue_row(ctx, issue_id).status is IssueStatus.SENDING


def test_resume_unfinished_skips_an_issue_finished_meanwhile(ctx: Context) -> None:
    add_subscribers(ctx, 2)
    first = make_issue(ctx, "First")
    second = make_issue(ctx, "Second")

    def another_process_finishes_second(p: Progress) -> None:
        set_issue(ctx, second, status=IssueStatus.SENT)

    summaries = delivery.resume_unfinished(ctx, progress=another_process_finishes_second)
    assert [s.issue_id for s in summaries] == [first]


def test_resume_unfinished_with_nothing_to_do(ctx: Context) -> None:
    assert delivery.resume_unfinished(ctx) == []


# --- cancel ------------------------------------------------------------------------


def test_cancel_records_when_and_why(ctx: Context) -> None:
    add_subscribers(ctx, 2)
    issue_id = make_issue(ctx)
    before = utcnow()
    with ctx.db.write() as session:
        issue = delivery.cancel(session, issue_id)
        assert issue.id == issue_id
    row = issue_row(ctx, issue_id)
    assert row.status is IssueStatus.CANCELLED
    assert row.status_reason == "cancelled"
    assert row.finished_at is not None and row.finished_at >= before
    with ctx.db.write() as session, pytest.raises(delivery.IssueStateError) as again:
        delivery.cancel(session, issue_id)
    assert str(again.value) == f"issue {issue_id} is already cancelled"


def test_cancel_refuses_a_sent_issue(ctx: Context) -> None:
    add_subscribers(ctx, 1)
    issue_id = make_issue(ctx)
    assert delivery.send_issue(ctx, issue_id).ok
    with ctx.db.write() as session, pytest.raises(delivery.IssueStateError) as caught:
        delivery.cancel(session, issue_id)
    assert str(caught.value) == f"issue {issue_id} is already sent"
    assert issue_row(ctx, issue_id).status is IssueStatus.SENT


def test_a_paused_issue_can_be_cancelled(ctx: Context) -> None:
    add_subscribers(ctx, 1)
    issue_id = make_issue(ctx)
    set_issue(ctx, issue_id, status=IssueStatus.PAUSED, status_reason="554 blocked")
    with ctx.db.write() as session:
        delivery.cancel(session, issue_id)
    assert issue_row(ctx, issue_id).status_reason == "cancelled"


# --- retry_failed and resume ------------------------------------------------------------


def test_retry_failed_refuses_a_cancelled_issue(ctx: Context) -> None:
    add_subscribers(ctx, 1)
    issue_id = make_issue(ctx)
    with ctx.db.write() as session:
        delivery.cancel(session, issue_id)
    with pytest.raises(delivery.IssueStateError) as caught:
        delivery.retry_failed(ctx, issue_id)
    assert str(caught.value) == f"issue {issue_id} is cancelled"


def test_retry_failed_refuses_a_sent_issue_without_failures(ctx: Context) -> None:
    add_subscribers(ctx, 1)
    issue_id = make_issue(ctx)
    assert delivery.send_issue(ctx, issue_id).ok
    with pytest.raises(delivery.IssueStateError) as caught:
        delivery.retry_failed(ctx, issue_id)
    assert str(caught.value) == f"issue {issue_id} has no failed deliveries"
    assert issue_row(ctx, issue_id).status is IssueStatus.SENT


def test_retry_failed_sends_the_failed_ones_with_progress(ctx: Context) -> None:
    add_subscribers(ctx, 5)
    issue_id = make_issue(ctx)
    assert delivery.send_issue(ctx, issue_id).ok
    fail_some(ctx, issue_id, 2)  # as if two had been refused
    seen: list[Progress] = []
    summary = delivery.retry_failed(ctx, issue_id, progress=seen.append)
    assert summary.ok and summary.counts[DeliveryStatus.SENT] == 5 and summary.run.sent == 2
    assert seen and seen[-1].sent == 5 and seen[-1].sent_this_run == 2
    assert seen[-1].failed == 0
    assert outbox_files(ctx) == 5 + 2


def test_retry_failed_passes_the_stop_event(ctx: Context) -> None:
    add_subscribers(ctx, 5)
    issue_id = make_issue(ctx)
    fail_some(ctx, issue_id, 2)
    summary = delivery.retry_failed(ctx, issue_id, stop=stopped())
    assert summary.run.halt == "stop" and summary.status is IssueStatus.SENDING
    assert summary.reason == "5 deliveries still queued (stopped on request)"
    assert issue_row(ctx, issue_id).finished_at is None
    assert outbox_files(ctx) == 0


def test_retry_failed_of_a_sending_issue_without_failures_sends_the_rest(ctx: Context) -> None:
    add_subscribers(ctx, 2)
    issue_id = make_issue(ctx)
    summary = delivery.retry_failed(ctx, issue_id)
    assert summary.ok and summary.counts[DeliveryStatus.SENT] == 2


def broken_outbox(make_settings: Callable[..., Any], tmp_path: Path) -> Context:
    """The same database, with an outbox that cannot be created (its parent is a file)."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    return Context.open(make_settings(NEWSLETTER_OUTBOX=str(blocker / "outbox")))


def test_retry_failed_commits_the_requeue_before_sending(
    ctx: Context, make_settings: Callable[..., Any], tmp_path: Path
) -> None:
    add_subscribers(ctx, 3)
    issue_id = make_issue(ctx)
    assert delivery.send_issue(ctx, issue_id).ok
    fail_some(ctx, issue_id, 1)
    set_issue(ctx, issue_id, finished_at=utcnow())
    broken = broken_outbox(make_settings, tmp_path)
    try:
        with pytest.raises(OSError):
            delivery.retry_failed(broken, issue_id)
    finally:
        broken.close()
    row = issue_row(ctx, issue_id)  # queued again, the old outcome cleared
    assert (row.status, row.status_reason, row.finished_at) == (IssueStatus.SENDING, None, None)
    with ctx.db.read() as session:
        assert ledger.counts(session, issue_id)[DeliveryStatus.QUEUED] == 1


def test_resume_un_pauses_before_sending(
    ctx: Context, make_settings: Callable[..., Any], tmp_path: Path
) -> None:
    add_subscribers(ctx, 2)
    issue_id = make_issue(ctx)
    set_issue(ctx, issue_id, status=IssueStatus.PAUSED, status_reason="554 blocked")
    broken = broken_outbox(make_settings, tmp_path)
    try:
        with pytest.raises(OSError):
            delivery.resume(broken, issue_id)
    finally:
        broken.close()
    row = issue_row(ctx, issue_id)
    assert (row.status, row.status_reason) == (IssueStatus.SENDING, None)


def test_resume_passes_progress_and_stop(ctx: Context) -> None:
    add_subscribers(ctx, 3)
    issue_id = make_issue(ctx)
    set_issue(ctx, issue_id, status=IssueStatus.PAUSED, status_reason="554 blocked")
    held = delivery.resume(ctx, issue_id, stop=stopped())
    assert held.run.halt == "stop"
    assert held.reason == "3 deliveries still queued (stopped on request)"
    seen: list[Progress] = []
    done = delivery.resume(ctx, issue_id, progress=seen.append)
    assert done.ok and seen and seen[-1].sent == 3


def test_unfinished_issue_is_the_oldest_sending_or_paused(ctx: Context) -> None:
    with ctx.db.read() as session:
        assert delivery.unfinished_issue(session) is None
    add_subscribers(ctx, 1)
    done = make_issue(ctx)
    assert delivery.send_issue(ctx, done).ok
    sending = make_issue(ctx)
    paused = make_issue(ctx)
    set_issue(ctx, paused, status=IssueStatus.PAUSED, status_reason="554 blocked")
    # rewritten last: on PostgreSQL its row now comes last in a table scan
    set_issue(ctx, sending, status_reason=None)
    with ctx.db.read() as session:  # the oldest, whether sending or paused
        # (unordered, SQLite's index on status would give the paused one first)
        found = delivery.unfinished_issue(session)
        assert found is not None and found.id == sending
    set_issue(ctx, sending, status=IssueStatus.CANCELLED)
    with ctx.db.read() as session:
        found = delivery.unfinished_issue(session)
        assert found is not None and found.id == paused


def test_other_senders_splits_pid_and_token_off_the_right(ctx: Context) -> None:
    add_subscribers(ctx, 2)
    issue_id = make_issue(ctx)
    with ctx.db.write() as session:  # a host name with colons (an IPv6 literal)
        v6 = ledger.Claimant("fd00::7:31337:0123456789ab", utcnow() + timedelta(minutes=5))
        ledger.claim_next(session, issue_id, 0, 2, v6)
    with ctx.db.read() as session:
        assert delivery.other_senders(session, issue_id) == [("fd00::7", "31337", 2)]


def test_finish_settles_the_status_from_the_ledger(ctx: Context) -> None:
    """``_finish`` on its own, for run endings a real run reaches only by timing."""
    add_subscribers(ctx, 3)
    issue_id = make_issue(ctx)
    plain = delivery._finish(ctx, issue_id, RunStats())  # nothing halted, nothing retried
    assert (plain.status, plain.reason) == (IssueStatus.SENDING, "3 deliveries still queued")
    retried = delivery._finish(ctx, issue_id, RunStats(last_retry_text="451 4.7.1 later"))
    assert retried.reason == "3 deliveries still queued (last error: 451 4.7.1 later)"
    named = delivery._finish(ctx, issue_id, RunStats(reason="why", last_retry_text="451"))
    assert named.reason == "3 deliveries still queued (why)"
    paused = delivery._finish(ctx, issue_id, RunStats(halt="pause", reason="554 5.7.1 no"))
    assert (paused.status, paused.reason) == (IssueStatus.PAUSED, "554 5.7.1 no")
    again = delivery._finish(ctx, issue_id, RunStats(halt="pause", reason="other"))
    assert (again.status, again.reason) == (IssueStatus.PAUSED, "554 5.7.1 no")  # kept
    row = issue_row(ctx, issue_id)
    assert (row.status, row.status_reason, row.finished_at) == (
        IssueStatus.PAUSED,
        "554 5.7.1 no",
        None,
    )


def test_send_issue_hands_each_reader_their_rendering(ctx: Context) -> None:
    ids = sorted(add_subscribers(ctx, 3))
    with ctx.db.write() as session:  # the first two chose sport; the third reads it all
        session.execute(
            update(Subscriber)
            .where(Subscriber.id.in_(ids[:2]))
            .values(sections=encode_sections(["sport"]))
        )
    issue_id = make_issue(ctx, "The whole issue", enqueue=False)
    with ctx.db.write() as session:
        session.add(
            IssueVariant(
                issue_id=issue_id,
                number=1,
                sections=encode_sections(["sport"]),
                story_count=2,
                subject="Sport only",
                html=HTML,
                text=TEXT,
            )
        )
        session.flush()
        ledger.enqueue(session, issue_id)
    assert delivery.send_issue(ctx, issue_id).ok
    got = {}
    for path in (Path(ctx.settings.outbox) / "new").iterdir():
        msg = message_from_bytes(path.read_bytes(), policy=policy.default)
        got[str(msg["Delivered-To"])] = (str(msg["Subject"]), str(msg["Feedback-ID"]))
    feedback = f"{issue_id}:manual:"
    assert {to: subject for to, (subject, _) in got.items()} == {
        email_for(0): "Sport only",
        email_for(1): "Sport only",
        email_for(2): "The whole issue",
    }
    assert all(fid.startswith(feedback) for _, fid in got.values()), got
