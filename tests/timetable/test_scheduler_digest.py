"""The digest job at chosen instants: nothing new, once per day, missed runs and the grace time.

A real SMTP server records what is sent.  The clock is chosen by passing ``now``
to the jobs, or by time-machine around a real BackgroundScheduler for the "the
process was down at 07:00" cases: the scheduler, its triggers and the start-up
catch-up are the real ones, only the wall clock is controlled.  The day is the
Sunday London springs forward (07:00 BST = 06:00 UTC).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import time_machine
from _timetable_support import add_featured, add_readers, issue_count, wait_for
from apscheduler.events import EVENT_JOB_EXECUTED
from click.testing import CliRunner
from conftest import SMTPServer
from sqlalchemy import select

from newsletter.cli import main
from newsletter.config import Settings, load_settings
from newsletter.context import Context
from newsletter.models import Issue, IssueKind, IssueStatus
from newsletter.timetable import jobs
from newsletter.timetable.scheduler import DIGEST_JOB, UPKEEP_JOB, build_scheduler, missed_digest
from newsletter.timetable.triggers import digest_trigger

LONDON = ZoneInfo("Europe/London")
DAY = date(2026, 3, 29)


def at(hour: int, minute: int = 0, second: int = 0, day: date = DAY) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=LONDON)


@pytest.fixture
def make_ctx(
    make_settings: Callable[..., Settings], smtp_server: SMTPServer
) -> Iterator[Callable[..., Context]]:
    opened: list[Context] = []

    def factory(**overrides: str) -> Context:
        values = {
            "NEWSLETTER_SMTP_URL": smtp_server.url,
            "NEWSLETTER_TIMEZONE": "Europe/London",
            "NEWSLETTER_DIGEST_CRON": "0 7 * * *",
        }
        settings = make_settings(**{**values, **overrides})
        context = Context.open(settings)
        opened.append(context)
        return context

    yield factory
    for context in opened:
        context.close()


@pytest.fixture
def tctx(make_ctx: Callable[..., Context]) -> Context:
    return make_ctx()


@dataclass(frozen=True)
class DigestRow:
    digest_date: date | None
    status: IssueStatus


def digests(ctx: Context) -> list[DigestRow]:
    with ctx.db.read() as session:
        rows = session.execute(
            select(Issue.digest_date, Issue.status)
            .where(Issue.kind == IssueKind.DIGEST)
            .order_by(Issue.id)
        ).all()
    return [DigestRow(day, IssueStatus(status)) for day, status in rows]


def per_reader(smtp: SMTPServer) -> dict[str, int]:
    return {rcpt: len(msgs) for rcpt, msgs in smtp.handler.by_recipient().items()}


def test_nothing_new_logs_and_sends_nothing(
    tctx: Context, smtp_server: SMTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    add_readers(tctx, 3)
    caplog.set_level(logging.INFO, logger="newsletter.scheduler")
    trigger = digest_trigger(tctx.settings)

    outcome = jobs.logged("digest", lambda: jobs.run_digest(tctx, trigger, now=at(7, 0, 1)))

    assert isinstance(outcome, jobs.DigestRun) and outcome.outcome == "nothing new"
    assert issue_count(tctx) == 0 and smtp_server.messages == []
    lines = [r.getMessage() for r in caplog.records if r.name == "newsletter.scheduler"]
    assert len(lines) == 1, lines
    assert lines[0].startswith("digest: nothing new for 2026-03-29")


def test_one_digest_per_day_whatever_runs(
    tctx: Context, smtp_server: SMTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    readers = add_readers(tctx, 5)
    add_featured(tctx, 3)
    trigger = digest_trigger(tctx.settings)
    caplog.set_level(logging.INFO, logger="newsletter.scheduler")

    first = jobs.logged("digest", lambda: jobs.run_digest(tctx, trigger, now=at(7, 0, 0)))
    assert isinstance(first, jobs.DigestRun) and first.outcome == "sent"
    assert first.summary is not None and first.summary.run.sent == 5
    assert per_reader(smtp_server) == dict.fromkeys(readers, 1)
    line = caplog.records[-1].getMessage()
    assert line.startswith("digest: sent for 2026-03-29: issue ")
    assert "5 queued, sent: 5 sent, 0 failed, 0 bounced" in line

    add_featured(tctx, 2, tag="b")  # new stories later the same day wait for tomorrow
    for now in (at(7, 20), at(18, 0), at(23, 59, 59)):
        again = jobs.run_digest(tctx, trigger, now=now)
        assert again.outcome == "already sent today", now
    assert len(digests(tctx)) == 1
    assert per_reader(smtp_server) == dict.fromkeys(readers, 1)

    tomorrow = jobs.run_digest(tctx, trigger, now=at(7, 0, 0, day=DAY + timedelta(days=1)))
    assert tomorrow.outcome == "sent"
    assert [d.digest_date for d in digests(tctx)] == [DAY, DAY + timedelta(days=1)]
    assert per_reader(smtp_server) == dict.fromkeys(readers, 2)
    assert all(
        "Story b" in m.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        for m in smtp_server.messages[5:]
    )


def test_two_timetables_racing_the_same_morning_send_once(
    make_ctx: Callable[..., Context], smtp_server: SMTPServer
) -> None:
    """Two timetables (two Contexts, two engines on one database file) fire at 07:00.

    Whoever's write transaction comes second (BEGIN IMMEDIATE queues them) finds
    the day's digest and stands down; the unique ``digest_date`` backs that up.
    """
    first, second = make_ctx(), make_ctx()
    readers = add_readers(first, 4)
    add_featured(first, 2)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def fire(ctx: Context) -> None:
        trigger = digest_trigger(ctx.settings)
        barrier.wait()
        outcomes.append(jobs.run_digest(ctx, trigger, now=at(7, 0, 0)).outcome)

    threads = [threading.Thread(target=fire, args=(c,)) for c in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert sorted(outcomes) == ["already sent today", "sent"]
    assert len(digests(first)) == 1
    assert per_reader(smtp_server) == dict.fromkeys(readers, 1)


@dataclass
class SchedulerRun:
    executed: list[str]  # job ids, in the order they finished
    next_digest: datetime | None  # the digest job's next run time when we stopped


def run_scheduler_at(
    ctx: Context, moment: datetime, until: Callable[[], bool] = lambda: True
) -> SchedulerRun:
    """Start the real timetable scheduler with the clock at ``moment``.

    Stops once the start-up upkeep has run (so the scheduler did process its
    start-up work) and ``until()`` holds.
    """
    stop = threading.Event()
    executed: list[str] = []
    with time_machine.travel(moment, tick=True):
        scheduler = build_scheduler(ctx, blocking=False, stop=stop)
        scheduler.add_listener(lambda e: executed.append(e.job_id), EVENT_JOB_EXECUTED)
        scheduler.start()
        try:
            wait_for(lambda: UPKEEP_JOB in executed and until(), 20, "the scheduler's work")
            next_digest: datetime | None = scheduler.get_job(DIGEST_JOB).next_run_time
        finally:
            stop.set()
            scheduler.shutdown(wait=True)
    return SchedulerRun(executed, next_digest)


def test_down_at_7_back_within_the_grace_time_sends_that_days_digest_once(
    tctx: Context, smtp_server: SMTPServer
) -> None:
    readers = add_readers(tctx, 3)
    add_featured(tctx, 2)
    trigger = digest_trigger(tctx.settings)
    assert tctx.settings.misfire_grace_seconds == 3600
    assert missed_digest(tctx, trigger, at(7, 30)) == at(7, 0)

    run = run_scheduler_at(tctx, at(7, 30), lambda: len(smtp_server.messages) == 3)

    assert DIGEST_JOB in run.executed
    assert [d.digest_date for d in digests(tctx)] == [DAY]
    assert run.next_digest == at(7, 0, day=DAY + timedelta(days=1))  # then it follows the cron
    # restarted again ten minutes later: nothing left to catch up
    assert missed_digest(tctx, trigger, at(7, 40)) is None
    assert DIGEST_JOB not in run_scheduler_at(tctx, at(7, 40)).executed
    assert per_reader(smtp_server) == dict.fromkeys(readers, 1)
    assert [d.status for d in digests(tctx)] == [IssueStatus.SENT]


def test_down_at_7_back_after_the_grace_time_sends_nothing_until_tomorrow(
    tctx: Context, smtp_server: SMTPServer
) -> None:
    readers = add_readers(tctx, 3)
    add_featured(tctx, 2)
    trigger = digest_trigger(tctx.settings)
    assert missed_digest(tctx, trigger, at(8, 0, 1)) is None

    run = run_scheduler_at(tctx, at(8, 0, 1))
    assert DIGEST_JOB not in run.executed
    assert run.next_digest == at(7, 0, day=DAY + timedelta(days=1))
    assert issue_count(tctx) == 0 and smtp_server.messages == []

    # back the next day at 07:10: only that day's run is caught up, once
    tomorrow = DAY + timedelta(days=1)
    assert missed_digest(tctx, trigger, at(7, 10, day=tomorrow)) == at(7, 0, day=tomorrow)
    run_scheduler_at(tctx, at(7, 10, day=tomorrow), lambda: len(smtp_server.messages) == 3)
    assert [d.digest_date for d in digests(tctx)] == [tomorrow]
    assert per_reader(smtp_server) == dict.fromkeys(readers, 1)


def test_grace_time_is_configurable(make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx(NEWSLETTER_MISFIRE_GRACE_SECONDS="7200")
    trigger = digest_trigger(ctx.settings)
    assert missed_digest(ctx, trigger, at(8, 30)) == at(7, 0)
    assert missed_digest(ctx, trigger, at(9, 0, 1)) is None


def test_a_handled_run_is_not_caught_up_again(tctx: Context, smtp_server: SMTPServer) -> None:
    """07:00 found nothing new; stories featured at 07:05 wait for tomorrow after a restart."""
    add_readers(tctx, 2)
    trigger = digest_trigger(tctx.settings)
    assert jobs.run_digest(tctx, trigger, now=at(7, 0, 0)).outcome == "nothing new"
    add_featured(tctx, 2)
    assert missed_digest(tctx, trigger, at(7, 10)) is None
    assert smtp_server.messages == []


def test_a_digest_sent_by_hand_is_not_caught_up(tctx: Context, smtp_server: SMTPServer) -> None:
    add_readers(tctx, 2)
    add_featured(tctx, 1)
    trigger = digest_trigger(tctx.settings)
    with time_machine.travel(at(6, 30), tick=False):  # `newsletter send` before 07:00
        assert jobs.run_digest(tctx, trigger).outcome == "sent"
    assert missed_digest(tctx, trigger, at(7, 10)) is None


def test_the_day_comes_from_the_scheduled_time(make_ctx: Callable[..., Context]) -> None:
    """A 23:55 digest that runs at 00:05 (within the grace time) is the previous day's."""
    ctx = make_ctx(NEWSLETTER_DIGEST_CRON="55 23 * * *")
    trigger = digest_trigger(ctx.settings)
    day, fire = jobs.digest_day(ctx, trigger, at(0, 5, day=DAY + timedelta(days=1)))
    assert (day, fire) == (DAY, at(23, 55))
    day, fire = jobs.digest_day(ctx, trigger, at(12, 0))  # by hand, no run due
    assert day == DAY and fire == at(12, 0)


def test_newsletter_send_after_the_scheduled_digest_sends_nothing_more(
    cli_env: dict[str, str], smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The timetable's digest went out this morning; an editor then runs `newsletter send`."""
    monkeypatch.setenv("NEWSLETTER_SMTP_URL", smtp_server.url)
    ctx = Context.open(load_settings(dotenv_path=None))
    try:
        readers = add_readers(ctx, 3)
        add_featured(ctx, 2)
        assert jobs.run_digest(ctx, digest_trigger(ctx.settings)).outcome == "sent"
        add_featured(ctx, 1, tag="late")
        result = CliRunner().invoke(main, ["send", "--yes"])
        assert result.exit_code == 0, result.output
        assert "already sent" in result.output
        assert len(digests(ctx)) == 1
        assert per_reader(smtp_server) == dict.fromkeys(readers, 1)
    finally:
        ctx.close()
