"""The ledger and the send loop against a real aiosmtpd server and real SQLite files."""

from __future__ import annotations

import email
import email.policy
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from _delivery_support import (
    FaultHandler,
    add_subscribers,
    counts,
    email_for,
    issue_row,
    make_issue,
    statuses,
)
from conftest import SMTPServer, start_smtp
from sqlalchemy import select

from newsletter.context import Context
from newsletter.delivery import ledger
from newsletter.delivery import send as delivery
from newsletter.delivery.engine import Progress, sender_id
from newsletter.lease import Holder
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    IssueStatus,
    Lease,
    Subscriber,
    SubscriberStatus,
    utcnow,
)

FAST = {"NEWSLETTER_RETRY_BASE_SECONDS": "0.05", "NEWSLETTER_BATCH_SIZE": "7"}


@pytest.fixture
def open_ctx(make_settings: Callable[..., object]) -> Iterator[Callable[..., Context]]:
    opened: list[Context] = []

    def factory(**overrides: str) -> Context:
        c = Context.open(make_settings(**{**FAST, **overrides}))  # type: ignore[arg-type]
        opened.append(c)
        return c

    yield factory
    for c in opened:
        c.close()


@pytest.fixture
def faulty() -> Iterator[Callable[..., SMTPServer]]:
    servers: list[SMTPServer] = []

    def start(**options: object) -> SMTPServer:
        server = start_smtp(FaultHandler(**options))
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.controller.stop()


def test_enqueue_takes_active_subscribers_only(ctx: Context) -> None:
    add_subscribers(ctx, 5)
    add_subscribers(ctx, 2, SubscriberStatus.PENDING, start=100)
    add_subscribers(ctx, 2, SubscriberStatus.UNSUBSCRIBED, start=200)
    issue_id = make_issue(ctx, enqueue=False)
    with ctx.db.write() as session:
        assert ledger.enqueue(session, issue_id) == 5
        with pytest.raises(ValueError, match="already enqueued"):
            ledger.enqueue(session, issue_id)
    assert set(statuses(ctx, issue_id).values()) == {"queued"}


def test_send_delivers_everyone_exactly_once(
    open_ctx: Callable[..., Context], smtp_server: SMTPServer
) -> None:
    ctx = open_ctx(NEWSLETTER_SMTP_URL=smtp_server.url, NEWSLETTER_SMTP_CONNECTIONS="3")
    add_subscribers(ctx, 60)
    issue_id = make_issue(ctx, "Hello readers")
    seen: list[Progress] = []
    summary = delivery.send_issue(ctx, issue_id, progress=seen.append)
    assert summary.ok and summary.status is IssueStatus.SENT
    assert summary.counts[DeliveryStatus.SENT] == 60 and summary.run.sent == 60
    got = counts(smtp_server.messages)
    assert got == {email_for(i): 1 for i in range(60)}
    assert seen and seen[-1].sent == 60 and seen[-1].total == 60
    with ctx.db.read() as session:
        rows = session.execute(
            select(Delivery.message_id, Delivery.sent_at, Delivery.attempts, Subscriber.email)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(Delivery.issue_id == issue_id)
        ).all()
    by_rcpt = {m.rcpt_tos[0]: m.message for m in smtp_server.messages}
    for message_id, sent_at, attempts, address in rows:
        assert sent_at is not None and attempts == 1
        assert by_rcpt[address]["Message-ID"] == message_id
        assert by_rcpt[address]["Subject"] == "Hello readers"
    issue = issue_row(ctx, issue_id)
    assert issue.started_at is not None and issue.finished_at is not None
    with ctx.db.read() as session:  # the lease is released
        assert session.get(Lease, f"issue:{issue_id}") is None


def test_a_sent_issue_is_not_sent_again(ctx: Context) -> None:
    add_subscribers(ctx, 3)
    issue_id = make_issue(ctx)
    assert delivery.send_issue(ctx, issue_id).ok  # into the Maildir outbox
    with pytest.raises(delivery.IssueStateError, match="sent"):
        delivery.send_issue(ctx, issue_id)
    with pytest.raises(delivery.IssueStateError, match="sent"):
        delivery.resume(ctx, issue_id)
    outbox = Path(ctx.settings.outbox) / "new"
    assert len(list(outbox.iterdir())) == 3
    raw = next(outbox.iterdir()).read_bytes()
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/alternative"


def test_subscribers_who_left_after_enqueue_are_skipped(
    open_ctx: Callable[..., Context], smtp_server: SMTPServer
) -> None:
    ctx = open_ctx(NEWSLETTER_SMTP_URL=smtp_server.url)
    ids = add_subscribers(ctx, 10)
    issue_id = make_issue(ctx)
    with ctx.db.write() as session:  # after enqueue, bypassing subscribers.unsubscribe
        for sid in ids[:3]:
            sub = session.get(Subscriber, sid)
            assert sub is not None
            sub.status = (
                SubscriberStatus.UNSUBSCRIBED if sid != ids[2] else SubscriberStatus.BOUNCED
            )
    summary = delivery.send_issue(ctx, issue_id)
    assert summary.ok
    assert summary.counts[DeliveryStatus.SKIPPED] == 3 and summary.counts[DeliveryStatus.SENT] == 7
    assert set(counts(smtp_server.messages)) == {email_for(i) for i in range(3, 10)}


def test_bounces_retries_drops_and_timeouts(
    open_ctx: Callable[..., Context], faulty: Callable[..., SMTPServer]
) -> None:
    server = faulty(
        bounce={email_for(3), email_for(17)},
        greylist={email_for(5), email_for(6)},
        drop_every=9,
        stall={email_for(11)},
        stall_seconds=1.5,
    )
    ctx = open_ctx(NEWSLETTER_SMTP_URL=server.url, NEWSLETTER_SMTP_TIMEOUT="0.5")
    add_subscribers(ctx, 30)
    issue_id = make_issue(ctx)
    summary = delivery.send_issue(ctx, issue_id)
    assert summary.status is IssueStatus.SENT and summary.ok, (summary.run, statuses(ctx, issue_id))
    assert summary.counts[DeliveryStatus.BOUNCED] == 2
    assert summary.counts[DeliveryStatus.SENT] == 28
    assert summary.run.retries >= 4  # 2 greylisted, >=1 dropped, 1 stalled
    received = counts(server.messages)
    expected = {email_for(i) for i in range(30)} - {email_for(3), email_for(17)}
    assert set(received) == expected
    assert all(n == 1 for n in received.values())  # nothing dropped was delivered twice
    assert server.handler.drops >= 1  # type: ignore[attr-defined]
    with ctx.db.read() as session:
        bounced = session.scalars(
            select(Subscriber.email).where(Subscriber.status == SubscriberStatus.BOUNCED)
        ).all()
        row = session.execute(
            select(Delivery.last_code, Delivery.last_response)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(Subscriber.email == email_for(3))
        ).one()
    assert sorted(bounced) == [email_for(3), email_for(17)]
    assert row[0] == 550 and "5.1.1" in row[1]
    # the bounced subscribers are not enqueued for the next issue
    with ctx.db.write() as session:
        next_issue = make_issue(ctx, enqueue=False)
        assert ledger.enqueue(session, next_issue) == 28


def test_retries_are_bounded_and_leftovers_stay_queued(
    open_ctx: Callable[..., Context], faulty: Callable[..., SMTPServer]
) -> None:
    stubborn = email_for(4)
    server = faulty(greylist={stubborn}, grey_times=5)
    ctx = open_ctx(NEWSLETTER_SMTP_URL=server.url, NEWSLETTER_MAX_ATTEMPTS="3")
    add_subscribers(ctx, 10)
    issue_id = make_issue(ctx)
    summary = delivery.send_issue(ctx, issue_id)
    assert not summary.ok and summary.status is IssueStatus.SENDING
    assert summary.left_queued == 1 and summary.run.exhausted == 1
    assert summary.next_retry is not None
    assert "1 deliveries still queued" in (summary.reason or "")
    assert "451 4.7.1" in (summary.reason or "")
    assert server.handler.tries[stubborn] == 3  # type: ignore[attr-defined]
    with ctx.db.read() as session:
        row = session.execute(
            select(Delivery.status, Delivery.attempts, Delivery.next_attempt_at)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(Subscriber.email == stubborn)
        ).one()
    assert row[0] is DeliveryStatus.QUEUED and row[1] == 3 and row[2] is not None
    # `issues resume` later: two more refusals, then the server takes it
    again = delivery.resume(ctx, issue_id)
    assert again.ok and again.counts[DeliveryStatus.SENT] == 10
    assert counts(server.messages)[stubborn] == 1


def test_a_delivery_deferred_run_after_run_finally_fails(
    open_ctx: Callable[..., Context], faulty: Callable[..., SMTPServer]
) -> None:
    """Upkeep resumes every few minutes: a forever-451 address must not be retried forever."""
    from newsletter.delivery.engine import RUNS_BEFORE_FAILING

    stubborn = email_for(2)
    server = faulty(greylist={stubborn}, grey_times=10_000)
    ctx = open_ctx(NEWSLETTER_SMTP_URL=server.url, NEWSLETTER_MAX_ATTEMPTS="2")
    add_subscribers(ctx, 4)
    issue_id = make_issue(ctx)
    summary = delivery.send_issue(ctx, issue_id)
    for _ in range(RUNS_BEFORE_FAILING - 1):
        assert summary.left_queued == 1
        summary = delivery.resume(ctx, issue_id)
    assert server.handler.tries[stubborn] == 2 * RUNS_BEFORE_FAILING  # type: ignore[attr-defined]
    assert summary.counts[DeliveryStatus.FAILED] == 1 and summary.left_queued == 0
    assert summary.counts[DeliveryStatus.SENT] == 3
    with ctx.db.read() as session:
        row = session.execute(
            select(Delivery.status, Delivery.last_code)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(Subscriber.email == stubborn)
        ).one()
    assert row == (DeliveryStatus.FAILED, 451)  # the server's last word is kept
    assert counts(server.messages).get(stubborn, 0) == 0


def test_policy_refusal_pauses_the_issue(
    open_ctx: Callable[..., Context], faulty: Callable[..., SMTPServer]
) -> None:
    server = faulty(policy={email_for(12)})
    ctx = open_ctx(NEWSLETTER_SMTP_URL=server.url, NEWSLETTER_SMTP_CONNECTIONS="2")
    add_subscribers(ctx, 40)
    issue_id = make_issue(ctx)
    summary = delivery.send_issue(ctx, issue_id)
    assert summary.status is IssueStatus.PAUSED and not summary.ok
    assert summary.reason is not None and summary.reason.startswith("554 5.7.1 Service unavailable")
    assert summary.left_queued > 0
    issue = issue_row(ctx, issue_id)
    assert issue.status is IssueStatus.PAUSED and issue.status_reason == summary.reason
    with ctx.db.read() as session:
        sub = session.scalar(select(Subscriber).where(Subscriber.email == email_for(12)))
        assert sub is not None and sub.status is SubscriberStatus.ACTIVE  # not the reader's fault
    with pytest.raises(delivery.IssueStateError, match="paused"):
        delivery.send_issue(ctx, issue_id)
    server.handler.policy.clear()  # type: ignore[attr-defined]  # the operator fixed it
    done = delivery.resume(ctx, issue_id)
    assert done.ok and done.counts[DeliveryStatus.SENT] == 40
    assert counts(server.messages) == {email_for(i): 1 for i in range(40)}


def test_failed_deliveries_can_be_retried(
    open_ctx: Callable[..., Context], faulty: Callable[..., SMTPServer]
) -> None:
    server = faulty(fail={email_for(2)})
    ctx = open_ctx(NEWSLETTER_SMTP_URL=server.url)
    add_subscribers(ctx, 5)
    issue_id = make_issue(ctx)
    summary = delivery.send_issue(ctx, issue_id)
    assert summary.status is IssueStatus.SENT and not summary.ok
    assert summary.counts[DeliveryStatus.FAILED] == 1
    assert summary.reason == "1 deliveries failed"
    server.handler.fail.clear()  # type: ignore[attr-defined]
    again = delivery.retry_failed(ctx, issue_id)
    assert again.ok and again.counts[DeliveryStatus.SENT] == 5
    assert counts(server.messages) == {email_for(i): 1 for i in range(5)}
    with pytest.raises(delivery.IssueStateError, match="no failed"):
        delivery.retry_failed(ctx, issue_id)


def test_stop_keeps_the_rest_queued_and_resume_finishes(
    open_ctx: Callable[..., Context], smtp_server: SMTPServer
) -> None:
    ctx = open_ctx(NEWSLETTER_SMTP_URL=smtp_server.url, NEWSLETTER_SEND_RATE="200")
    add_subscribers(ctx, 120)
    issue_id = make_issue(ctx)
    stop = threading.Event()

    def progress(p: Progress) -> None:
        if p.sent >= 20:
            stop.set()

    first = delivery.send_issue(ctx, issue_id, progress=progress, stop=stop)
    assert first.status is IssueStatus.SENDING and first.run.halt == "stop"
    assert 20 <= first.counts[DeliveryStatus.SENT] < 120
    assert first.counts[DeliveryStatus.SENDING] == 0  # unsent claims went back to the queue
    assert first.left_queued == 120 - first.counts[DeliveryStatus.SENT]
    [second] = delivery.resume_unfinished(ctx)
    assert second.ok
    assert counts(smtp_server.messages) == {email_for(i): 1 for i in range(120)}


def test_rows_left_sending_by_a_crash_are_retried(
    open_ctx: Callable[..., Context], smtp_server: SMTPServer
) -> None:
    ctx = open_ctx(NEWSLETTER_SMTP_URL=smtp_server.url)
    add_subscribers(ctx, 20)
    issue_id = make_issue(ctx)
    with ctx.db.write() as session:  # a dead sender claimed a batch and recorded 3 as sent
        dead = ledger.Claimant(
            "mailer-2.example:4242:feedfacecafe", utcnow() - timedelta(seconds=1)
        )
        claim = ledger.claim_next(session, issue_id, 0, 7, dead)
        done = [ledger.Result(j.subscriber_id, None) for j in claim.jobs[:3]]
        assert len(claim.jobs) == 7
        session.execute(
            Delivery.__table__.update()
            .where(Delivery.subscriber_id.in_([r.subscriber_id for r in done]))
            .values(status=DeliveryStatus.SENT.value)
        )
    summary = delivery.send_issue(ctx, issue_id)
    assert summary.ok and summary.counts[DeliveryStatus.SENT] == 20
    assert len(smtp_server.messages) == 17  # the 3 sent are never resent; 4 sending are


def test_a_live_senders_rows_are_left_alone_until_its_claim_expires(
    open_ctx: Callable[..., Context], smtp_server: SMTPServer
) -> None:
    """Another sender (another machine) holds 4 rows and stops renewing: they are taken
    back only once its claim has expired, so they arrive after everyone else's."""
    ctx = open_ctx(NEWSLETTER_SMTP_URL=smtp_server.url)
    add_subscribers(ctx, 12)
    issue_id = make_issue(ctx)
    other = ledger.Claimant("mailer-2.example:4242:0123456789ab", utcnow() + timedelta(seconds=2))
    with ctx.db.write() as session:
        held = [j.email for j in ledger.claim_next(session, issue_id, 0, 4, other).jobs]
        assert delivery.other_senders(session, issue_id) == [("mailer-2.example", "4242", 4)]
    summary = delivery.send_issue(ctx, issue_id)
    assert summary.ok and summary.counts[DeliveryStatus.SENT] == 12
    order = [m.rcpt_tos[0] for m in smtp_server.messages]
    assert counts(smtp_server.messages) == {email_for(i): 1 for i in range(12)}
    assert sorted(order[-4:]) == sorted(held)  # untouched while its claim was live


def test_a_dead_local_sender_is_taken_over_at_once(ctx: Context) -> None:
    import socket
    import subprocess

    add_subscribers(ctx, 2)
    issue_id = make_issue(ctx)
    proc = subprocess.Popen(["sleep", "0"])
    proc.wait()
    dead = ledger.Claimant(
        sender_id(Holder(token="y" * 32, host=socket.gethostname(), pid=proc.pid)),
        utcnow() + timedelta(minutes=5),
    )
    with ctx.db.write() as session:
        assert len(ledger.claim_next(session, issue_id, 0, 10, dead).jobs) == 2
    assert delivery.send_issue(ctx, issue_id).ok


def test_cancelled_issue_is_not_sent(ctx: Context) -> None:
    add_subscribers(ctx, 2)
    issue_id = make_issue(ctx)
    with ctx.db.write() as session:
        delivery.cancel(session, issue_id)
    with pytest.raises(delivery.IssueStateError, match="cancelled"):
        delivery.send_issue(ctx, issue_id)
    with ctx.db.write() as session, pytest.raises(delivery.IssueStateError, match="already"):
        delivery.cancel(session, issue_id)


def test_send_rate_is_honoured(open_ctx: Callable[..., Context], smtp_server: SMTPServer) -> None:
    ctx = open_ctx(NEWSLETTER_SMTP_URL=smtp_server.url, NEWSLETTER_SEND_RATE="40")
    add_subscribers(ctx, 30)
    issue_id = make_issue(ctx)
    started = time.monotonic()
    assert delivery.send_issue(ctx, issue_id).ok
    elapsed = time.monotonic() - started
    # 30 messages at 40/s, one token of initial credit: a lower bound only (a loaded
    # machine is slower, never faster; an upper bound would flake).
    assert elapsed >= 0.65
    assert len(smtp_server.messages) == 30


def test_a_streak_of_permanent_failures_pauses_the_issue(
    open_ctx: Callable[..., Context], faulty: Callable[..., SMTPServer]
) -> None:
    server = faulty(fail={email_for(i) for i in range(100)})  # e.g. the content is refused
    ctx = open_ctx(NEWSLETTER_SMTP_URL=server.url)
    add_subscribers(ctx, 100)
    issue_id = make_issue(ctx)
    summary = delivery.send_issue(ctx, issue_id)
    assert summary.status is IssueStatus.PAUSED
    assert summary.reason is not None and "in a row refused permanently" in summary.reason
    assert "554 5.6.0" in summary.reason
    assert summary.counts[DeliveryStatus.FAILED] < 100  # the rest of the list is kept
    assert summary.left_queued > 0
