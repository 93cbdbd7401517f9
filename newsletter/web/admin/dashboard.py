"""``/admin/``: readers by status, the 90-day chart, the next digest, last issues, warnings."""

from __future__ import annotations

from datetime import datetime

from markupsafe import Markup

from ...config import ConfigError
from ...models import utcnow
from .base import admin, ctx, page
from .chart import readers_chart
from .stats import (
    featured_waiting,
    issue_rows,
    paused_issues,
    placeholder_warnings,
    reader_series,
    readers_by_status,
)


def next_digest_time(now: datetime | None = None) -> datetime | None:
    """When the timetable fires next (NEWSLETTER_DIGEST_CRON), in the newsroom's zone."""
    from ...timetable import digest_trigger

    settings = ctx().settings
    try:
        trigger = digest_trigger(settings)
    except ConfigError:
        return None
    fire: datetime | None = trigger.get_next_fire_time(None, now or utcnow())
    return fire.astimezone(settings.tz) if fire is not None else None


def warnings() -> list[str]:
    """Everything an editor should act on before the next send."""
    from .hooks import extra_warnings

    out = placeholder_warnings(ctx().settings)
    with ctx().db.read() as session:
        for issue_id, reason in paused_issues(session):
            out.append(f"Issue #{issue_id} is paused: {reason or 'no reason recorded'}.")
        out.extend(extra_warnings(session, ctx().settings))
    return out


@admin.get("/")
def dashboard() -> tuple[str, int]:
    with ctx().db.read() as session:
        readers = readers_by_status(session)
        series = reader_series(session)
        waiting = featured_waiting(session)
        issues = issue_rows(session, limit=8)
    # Bandit B704: the SVG is drawn by readers_chart from numbers and escaped dates only.
    svg = readers_chart(series.days, series.active, series.signups)
    chart = Markup(svg)  # noqa: S704  # nosec B704
    return page(
        "dashboard.html",
        readers=readers,
        series=series,
        chart=chart,
        waiting=waiting,
        next_time=next_digest_time(),
        issues=issues,
        warnings=warnings(),
        timezone=ctx().settings.timezone,
    )
