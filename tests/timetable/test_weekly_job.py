"""The timetable's weekly edition: its trigger, one edition per ISO week, weekly readers only."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from _digest_support import add_story
from conftest import SMTPServer, start_smtp

from newsletter.config import Settings
from newsletter.context import Context
from newsletter.models import Frequency
from newsletter.subscribers import add_subscriber
from newsletter.subscribers.preferences import Choice, apply_choice
from newsletter.timetable.weekly import run_weekly, weekly_trigger

SUNDAY_8 = datetime(2026, 3, 8, 8, 0, tzinfo=ZoneInfo("Europe/London"))  # 2026-W10


@pytest.fixture
def smtp() -> Iterator[SMTPServer]:
    server = start_smtp()
    yield server
    server.controller.stop()


def test_default_trigger_is_sunday_0800_local(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(NEWSLETTER_TIMEZONE="Europe/London")
    trigger = weekly_trigger(settings)
    fire = trigger.get_next_fire_time(None, datetime(2026, 3, 4, 12, tzinfo=UTC))
    assert fire == SUNDAY_8
    custom = weekly_trigger(make_settings(NEWSLETTER_WEEKLY_CRON="30 18 * * 5"))
    assert custom.get_next_fire_time(None, datetime(2026, 3, 4, tzinfo=UTC)) == datetime(
        2026, 3, 6, 18, 30, tzinfo=UTC
    )


def test_run_weekly_once_per_iso_week_to_weekly_readers(
    make_settings: Callable[..., Settings], smtp: SMTPServer
) -> None:
    settings = make_settings(NEWSLETTER_TIMEZONE="Europe/London", NEWSLETTER_SMTP_URL=smtp.url)
    ctx = Context.open(settings)
    try:
        with ctx.db.write() as session:
            for local, frequency in (("w", Frequency.WEEKLY), ("d", Frequency.DAILY)):
                sid = add_subscriber(session, f"{local}@example.com", confirmed=True).id
                apply_choice(session, sid, Choice(frequency, None), [])
            add_story(session, title="Of the week", published_at=SUNDAY_8 - timedelta(days=2))
            add_story(session, title="Too old", published_at=SUNDAY_8 - timedelta(days=8))
        run = run_weekly(ctx, now=SUNDAY_8 + timedelta(minutes=1))
        assert run.outcome == "sent" and run.week == "2026-W10" and run.queued == 1
        again = run_weekly(ctx, now=SUNDAY_8 + timedelta(minutes=5))
        assert again.outcome == "already sent this week"
        assert [m.rcpt_tos for m in smtp.messages] == [["w@example.com"]]
        text = smtp.messages[0].message.get_body(preferencelist=("plain",))
        assert text is not None and "Too old" not in str(text.get_content())
        nothing = run_weekly(ctx, now=SUNDAY_8 + timedelta(days=21))
        assert nothing.outcome == "nothing this week"
    finally:
        ctx.close()


def test_a_weekly_run_missed_while_down_runs_at_start_once(
    make_settings: Callable[..., Settings], smtp: SMTPServer
) -> None:
    from newsletter.timetable.scheduler import build_scheduler
    from newsletter.timetable.weekly import WEEKLY_JOB

    settings = make_settings(NEWSLETTER_TIMEZONE="Europe/London", NEWSLETTER_SMTP_URL=smtp.url)
    ctx = Context.open(settings)
    late = SUNDAY_8 + timedelta(minutes=20)  # back within the grace time (an hour)

    def next_weekly(now: datetime) -> datetime:
        scheduler = build_scheduler(ctx, blocking=False, now=now)
        scheduler.start(paused=True)
        try:
            when: datetime = scheduler.get_job(WEEKLY_JOB).next_run_time
        finally:
            scheduler.shutdown(wait=False)
        return when

    try:
        assert next_weekly(late) == late
        with ctx.db.write() as session:
            sid = add_subscriber(session, "w@example.com", confirmed=True).id
            apply_choice(session, sid, Choice(Frequency.WEEKLY, None), [])
            add_story(session, title="Of the week", published_at=SUNDAY_8 - timedelta(days=1))
        assert run_weekly(ctx, now=late).outcome == "sent"
        # Handled: the next run is a regular Sunday 08:00 (from the real clock), not now.
        handled = late + timedelta(minutes=1)
        regular = next_weekly(handled)
        assert regular != handled and (regular.weekday(), regular.hour) == (6, 8)
        too_late = SUNDAY_8 + timedelta(days=7, hours=2)  # the next week, past the grace time
        assert next_weekly(too_late) != too_late
    finally:
        ctx.close()
