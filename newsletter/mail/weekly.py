"""The weekly edition: the week's featured stories, for readers who chose weekly.

Built by ``newsletter send --weekly`` and the timetable's NEWSLETTER_WEEKLY_CRON.
Its stories are the featured stories of the last 7 days (published then, or added
then when the feed gave no date), including those the dailies already carried:
the week's leads first (stories that led a daily digest that week, and a story
the editor pinned, where the admin offers pinning), then newest, at most
NEWSLETTER_WEEKLY_MAX_STORIES.  One weekly per ISO week in NEWSLETTER_TIMEZONE:
the unique ``issues.edition_week`` is the guard, exactly like the daily's
``digest_date`` (:class:`AlreadySentThisWeek`).  It has its own templates
(``weekly.html``/``weekly.txt``, "the week in N stories") and readers' section
choices apply as for the daily.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, case, exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..config import Settings
from ..context import Context
from ..models import Issue, IssueKind, IssueStatus, IssueStory, Story, utcnow
from .digest import frozen_issue, local_today
from .render import Rendered, long_date, render_issue, short_date
from .variants import record_variants

WINDOW = timedelta(days=7)


class AlreadySentThisWeek(Exception):
    """This ISO week's edition exists already; ``issue_id``/``week`` say which one."""

    def __init__(self, week: str, issue_id: int | None, status: str | None) -> None:
        self.week = week
        self.issue_id = issue_id
        self.status = status
        detail = f" (issue #{issue_id}, {status})" if issue_id is not None else ""
        super().__init__(f"the weekly edition for {week} already exists{detail}")


def iso_week(day: date) -> str:
    """``2026-W49``: the key of one weekly edition."""
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def edition_for(session: Session, week: str) -> Issue | None:
    return session.scalar(select(Issue).where(Issue.edition_week == week))


def _week_query(since: datetime, until: datetime) -> Select[Any]:
    when = func.coalesce(Story.published_at, Story.created_at)
    led_a_daily = exists(
        select(IssueStory.story_id)
        .join(Issue, Issue.id == IssueStory.issue_id)
        .where(
            IssueStory.story_id == Story.id,
            IssueStory.position == 0,
            Issue.kind == IssueKind.DIGEST,
            Issue.status != IssueStatus.CANCELLED,
        )
    )
    lead_terms: list[ColumnElement[bool]] = [led_a_daily]
    pinned = Story.__table__.c.get("pinned")  # the admin's pinned lead, where it exists
    if pinned is not None:
        lead_terms.insert(0, pinned.is_(True))
    leads = case(*((term, 0) for term in lead_terms), else_=1)
    return (
        select(Story)
        .where(Story.featured.is_(True), when >= since, when <= until)
        .order_by(leads, when.desc(), Story.id.desc())
    )


def weekly_stories(
    session: Session, settings: Settings, now: datetime | None = None
) -> list[Story]:
    """The week's stories in edition order (see the module docstring)."""
    now = now or utcnow()
    query = _week_query(now - WINDOW, now).limit(settings.weekly_max_stories)
    return list(session.scalars(query))


def _render(ctx: Context, stories: list[Story], day: date) -> Rendered:
    first = day - timedelta(days=6)
    extra = {
        "week": iso_week(day),
        "week_range": f"{short_date(first)} – {short_date(day)}",
        "week_end_long": long_date(day),
    }
    return render_issue(ctx, stories, day, template="weekly", extra=extra)


def build_weekly(
    session: Session,
    ctx: Context,
    *,
    today: date | None = None,
    now: datetime | None = None,
    record: bool = True,
) -> Issue | None:
    """Freeze this week's edition (flushed, not committed), or None with no stories.

    Raises :class:`AlreadySentThisWeek` when the ISO week has its edition already.
    ``record=False`` (previews, the draft shown before "send this?") returns it
    unsaved, with no id, like ``digest.build_issue``.
    """
    now = now or utcnow()
    day = today or local_today(ctx.settings, now)
    week = iso_week(day)
    existing = edition_for(session, week)
    if existing is not None:
        raise AlreadySentThisWeek(week, existing.id, existing.status.value)
    stories = weekly_stories(session, ctx.settings, now)
    if not stories:
        return None
    rendered = _render(ctx, stories, day)
    issue = frozen_issue(IssueKind.WEEKLY, rendered, stories, edition_week=week)
    if not record:
        return issue
    try:
        with session.begin_nested():
            session.add(issue)
            session.flush()
    except IntegrityError:
        other = edition_for(session, week)
        raise AlreadySentThisWeek(
            week, other.id if other else None, other.status.value if other else None
        ) from None
    record_variants(session, issue, stories, lambda subset: _render(ctx, list(subset), day))
    return issue
