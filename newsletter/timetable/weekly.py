"""The timetable's weekly edition: NEWSLETTER_WEEKLY_CRON (default Sunday 08:00 local).

Same shape as the daily digest job: build and queue in one transaction, then send
under the issue's lease; the per-process sending lock keeps it from running at
the same time as the digest job or upkeep.  The once-a-week rule is the unique
``issues.edition_week`` (``mail.weekly.AlreadySentThisWeek``), so a restart, a
coalesced misfire or a manual ``send --weekly`` never makes a second edition.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

from .. import delivery
from ..config import PREFIX, ConfigError, Settings, crontab_weekdays
from ..context import Context
from ..models import utcnow
from .jobs import _SENDING, Outcome, describe_send
from .triggers import DigestTrigger, most_recent_fire

WEEKLY_JOB = "weekly"


def weekly_trigger(settings: Settings) -> DigestTrigger:
    """The trigger from NEWSLETTER_WEEKLY_CRON (crontab weekdays: 0 or 7 = Sunday)."""
    fields = settings.weekly_cron.split()
    try:
        return DigestTrigger(
            minute=fields[0],
            hour=fields[1],
            day=fields[2],
            month=fields[3],
            day_of_week=crontab_weekdays(fields[4]),
            timezone=settings.tz,
        )
    except (ValueError, IndexError) as exc:
        raise ConfigError(f"{PREFIX}WEEKLY_CRON: {exc}") from None


def missed_weekly(ctx: Context, now: datetime) -> datetime | None:
    """The weekly fire time missed while the timetable was down, if it should run now.

    The most recent fire time within the misfire grace time whose ISO week has no
    edition yet (the edition itself is the record that the run was handled).
    """
    from datetime import timedelta

    from ..mail.weekly import edition_for, iso_week

    grace = timedelta(seconds=ctx.settings.misfire_grace_seconds)
    fire = most_recent_fire(weekly_trigger(ctx.settings), now, grace)
    if fire is None:
        return None
    with ctx.db.read() as session:
        existing = edition_for(session, iso_week(fire.astimezone(ctx.settings.tz).date()))
    return None if existing is not None else fire


@dataclass
class WeeklyRun(Outcome):
    week: str
    outcome: str  # "sent" | "nothing this week" | "already sent this week" | "queued ..."
    issue_id: int | None = None
    queued: int = 0
    summary: delivery.SendSummary | None = None

    def describe(self) -> str:
        text = f"{self.outcome} for {self.week}"
        if self.issue_id is not None:
            text += f": issue {self.issue_id}, {self.queued} queued"
        if self.summary is not None:
            text += f", {describe_send(self.summary)}"
        return text


def run_weekly(
    ctx: Context, stop: threading.Event | None = None, now: datetime | None = None
) -> WeeklyRun:
    """Build this week's edition for the weekly readers, queue it and send it.

    The week is that of the scheduled fire time (a late Sunday-night run still
    counts for its own week), else of ``now``.
    """
    from datetime import timedelta

    from ..mail.digest import local_today
    from ..mail.weekly import AlreadySentThisWeek, build_weekly, iso_week

    now = now or utcnow()
    grace = timedelta(seconds=ctx.settings.misfire_grace_seconds)
    fire = most_recent_fire(weekly_trigger(ctx.settings), now + timedelta(microseconds=1), grace)
    fire = fire or now
    day = local_today(ctx.settings, fire)
    week = iso_week(day)
    with _SENDING:
        issue_id: int | None = None
        queued = 0
        try:
            with ctx.db.write() as session:
                issue = build_weekly(session, ctx, today=day, now=now)
                if issue is not None:
                    issue_id = issue.id
                    queued = delivery.enqueue(session, issue.id)
        except AlreadySentThisWeek:
            return WeeklyRun(week, "already sent this week")
        if issue_id is None:
            return WeeklyRun(week, "nothing this week")
        if stop is not None and stop.is_set():
            return WeeklyRun(week, "queued (stopping; upkeep sends it)", issue_id, queued)
        try:
            summary = delivery.send_issue(ctx, issue_id, stop=stop)
        except delivery.LeaseHeld as exc:
            return WeeklyRun(week, f"queued ({exc})", issue_id, queued)
    return WeeklyRun(week, "sent" if summary.ok else "sending", issue_id, queued, summary)
