"""The feed-polling and upkeep jobs against real feeds, a real SMTP server and a real ledger."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from _timetable_support import add_featured, add_readers, delivery_counts, serve_directory
from conftest import FEEDS, SMTPServer
from sqlalchemy import func, select, update

from newsletter.config import Settings
from newsletter.context import Context
from newsletter.delivery import ledger
from newsletter.delivery import send as delivery
from newsletter.mail import digest
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Issue,
    IssueStatus,
    Story,
    Subscriber,
    utcnow,
)
from newsletter.subscribers import store as subscribers
from newsletter.timetable import jobs


@pytest.fixture
def feeds_base() -> Iterator[str]:
    with serve_directory(FEEDS) as base:
        yield base


@pytest.fixture
def sctx(make_settings: Callable[..., Settings], smtp_server: SMTPServer) -> Iterator[Context]:
    context = Context.open(make_settings(NEWSLETTER_SMTP_URL=smtp_server.url))
    yield context
    context.close()


def test_feed_job_imports_featured_and_skips_unchanged_feeds(
    shared: Path,
    make_settings: Callable[..., Settings],
    feeds_base: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    urls = [f"{feeds_base}/bbc.xml", f"{feeds_base}/nytimes.xml", f"{feeds_base}/missing.xml"]
    ctx = Context.open(make_settings(NEWSLETTER_FEEDS=" ".join(urls)))
    caplog.set_level(logging.INFO, logger="newsletter.scheduler")
    try:
        first = jobs.logged("feeds", lambda: jobs.poll_feeds(ctx))
        assert isinstance(first, jobs.FeedsRun)
        assert (first.polled, first.unchanged, len(first.errors)) == (3, 0, 1)
        assert "missing.xml" in first.errors[0]
        with ctx.db.read() as session:
            total = session.scalar(select(func.count()).select_from(Story))
            featured = session.scalar(select(func.count()).select_from(Story).where(Story.featured))
        assert first.new == total == featured and total > 50  # imported as featured

        second = jobs.poll_feeds(ctx)  # If-Modified-Since -> 304 from http.server
        assert (second.new, second.unchanged, len(second.errors)) == (0, 2, 1)
        lines = [r.getMessage() for r in caplog.records if r.name == "newsletter.scheduler"]
        assert lines == [lines[0]] and lines[0].startswith(
            f"feeds: polled 3 feeds: {total} new stories, 0 unchanged, 1 failed ("
        )
    finally:
        ctx.close()


def test_upkeep_purges_pending_signups_older_than_a_week(ctx: Context) -> None:
    now = utcnow()
    with ctx.db.write() as session:
        for email, age in (("old@example.org", 8), ("young@example.org", 6)):
            subscribers.request_subscription(session, email, now=now - timedelta(days=age))
        subscribers.add_subscriber(session, "imported@example.org", confirmed=False)
        subscribers.add_subscriber(session, "active@example.org", confirmed=True)
    run = jobs.run_upkeep(ctx, now=now)
    assert run.purged == 1 and run.resumed == []
    with ctx.db.read() as session:
        left = sorted(session.scalars(select(Subscriber.email)))
    assert left == ["active@example.org", "imported@example.org", "young@example.org"]
    assert run.describe().startswith("purged 1 expired pending subscribers, resumed 0 issues")


def make_issue(ctx: Context, readers: int) -> int:
    add_readers(ctx, readers)
    add_featured(ctx, 2)
    with ctx.db.write() as session:
        issue = digest.build_issue(session, ctx)
        assert issue is not None
        delivery.enqueue(session, issue.id)
        return issue.id


def set_rows(ctx: Context, issue_id: int, count: int | None, **values: object) -> None:
    """Update the first ``count`` delivery rows of the issue (all when None)."""
    with ctx.db.write() as session:
        query = (
            select(Delivery.subscriber_id)
            .where(Delivery.issue_id == issue_id)
            .order_by(Delivery.subscriber_id)
        )
        ids = list(session.scalars(query if count is None else query.limit(count)))
        session.execute(
            update(Delivery)
            .where(Delivery.issue_id == issue_id, Delivery.subscriber_id.in_(ids))
            .values(**values)
        )


def due(ctx: Context, when: timedelta = timedelta(0)) -> list[int]:
    with ctx.db.read() as session:
        return jobs.due_issue_ids(session, utcnow() + when)


def test_which_issues_are_due(sctx: Context) -> None:
    issue_id = make_issue(sctx, 4)
    assert due(sctx) == [issue_id]  # queued, never attempted
    later = utcnow() + timedelta(minutes=10)
    set_rows(sctx, issue_id, 2, status=DeliveryStatus.SENT)
    set_rows(sctx, issue_id, None, next_attempt_at=later)  # deferred retries
    set_rows(sctx, issue_id, 2, status=DeliveryStatus.SENT, next_attempt_at=None)
    assert due(sctx) == []  # only deferred rows left, not due yet
    assert due(sctx, timedelta(minutes=11)) == [issue_id]
    set_rows(sctx, issue_id, 3, status=DeliveryStatus.SENDING)  # a crash mid-batch
    assert due(sctx) == [issue_id]
    with sctx.db.write() as session:
        session.get_one(Issue, issue_id).status = IssueStatus.PAUSED
    assert due(sctx, timedelta(days=1)) == []  # paused waits for a human
    with sctx.db.write() as session:
        session.get_one(Issue, issue_id).status = IssueStatus.SENDING
    set_rows(sctx, issue_id, None, status=DeliveryStatus.SENT)
    assert due(sctx) == [issue_id]  # all done but never settled: upkeep settles it


def test_upkeep_resumes_a_crashed_send_without_resending(
    sctx: Context, smtp_server: SMTPServer
) -> None:
    issue_id = make_issue(sctx, 5)
    set_rows(sctx, issue_id, 2, status=DeliveryStatus.SENT, message_id="<before@crash>")
    set_rows(sctx, issue_id, 3, status=DeliveryStatus.SENDING)  # third row was in flight
    set_rows(sctx, issue_id, 2, status=DeliveryStatus.SENT)

    run = jobs.run_upkeep(sctx)

    assert [s.issue_id for s in run.resumed] == [issue_id]
    assert run.resumed[0].status is IssueStatus.SENT
    with sctx.db.read() as session:
        first_two = list(
            session.scalars(
                select(Subscriber.email)
                .join(Delivery, Delivery.subscriber_id == Subscriber.id)
                .where(Delivery.message_id == "<before@crash>")
            )
        )
    got = smtp_server.handler.by_recipient()
    assert len(got) == 3 and not set(got) & set(first_two)
    assert delivery_counts(sctx) == {DeliveryStatus.SENT: 5}
    assert f"issue {issue_id} sent: 3 sent, 0 failed" in run.describe()


def test_upkeep_skips_an_issue_another_process_is_sending(
    sctx: Context, smtp_server: SMTPServer
) -> None:
    issue_id = make_issue(sctx, 3)
    other = ledger.Claimant("other-host.example:99:elsewhere", utcnow() + timedelta(minutes=1))
    with sctx.db.write() as session:
        ledger.claim_next(session, issue_id, 0, 1, other)
    run = jobs.run_upkeep(sctx)
    assert run.busy == [issue_id] and run.resumed == []
    assert smtp_server.messages == []
    assert delivery_counts(sctx) == {DeliveryStatus.QUEUED: 2, DeliveryStatus.SENDING: 1}


def test_upkeep_leaves_deferred_rows_until_they_are_due(
    sctx: Context, smtp_server: SMTPServer
) -> None:
    issue_id = make_issue(sctx, 2)
    set_rows(sctx, issue_id, None, next_attempt_at=utcnow() + timedelta(minutes=5))
    assert jobs.run_upkeep(sctx).resumed == []
    assert smtp_server.messages == []
    run = jobs.run_upkeep(sctx, now=utcnow() + timedelta(minutes=6))
    assert [s.issue_id for s in run.resumed] == [issue_id]
    assert len(smtp_server.messages) == 2


def test_a_failing_job_is_one_error_line_and_the_timetable_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> jobs.Outcome:
        raise RuntimeError("database is on fire")

    caplog.set_level(logging.INFO, logger="newsletter.scheduler")
    assert jobs.logged("upkeep", broken) is None
    (record,) = [r for r in caplog.records if r.name == "newsletter.scheduler"]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert record.getMessage().startswith("upkeep: failed after ")
    assert record.getMessage().endswith("database is on fire")
