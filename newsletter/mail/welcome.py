"""The welcome email a reader gets once, right after confirming.

It says what to expect and when (the daily digest's or the weekly edition's
schedule, in words), links the preferences page, and shows the latest issue's top
stories when there is one.  Rendered per person (it is one email, not an issue):
templates ``welcome.html``/``welcome.txt`` with the same safety as every email
(autoescaped HTML, cleaned story fields, http(s) links only, premailer).  The
greeting and unsubscribe link are the usual placeholders, filled by
``message.build_single``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..config import crontab_weekdays
from ..context import Context
from ..models import Frequency, Story
from .render import (
    GREETING,
    UNSUBSCRIBE_URL,
    Rendered,
    clean_text,
    environments,
    finish_html,
    http_url,
    story_view,
    tidy_text,
)

TOP_STORIES = 3
_DAY_NAMES = {
    "mon": "Monday",
    "tue": "Tuesday",
    "wed": "Wednesday",
    "thu": "Thursday",
    "fri": "Friday",
    "sat": "Saturday",
    "sun": "Sunday",
}


def describe_schedule(cron: str, timezone: str) -> str:
    """A crontab line in words: ``0 7 * * *`` -> "every day at 07:00 (UTC)".

    Only the common shapes (one time of day, any weekdays) are put in words; for
    anything else the cron line itself is shown rather than a wrong sentence.
    """
    fields = cron.split()
    if len(fields) == 5 and fields[0].isdigit() and fields[1].isdigit():
        minute, hour, day, month, weekday = fields
        if day == "*" and month == "*":
            at = f"at {int(hour):02d}:{int(minute):02d} ({timezone})"
            try:
                days = crontab_weekdays(weekday)
            except ValueError:
                days = ""
            if days == "*":
                return f"every day {at}"
            if days:
                names = [_DAY_NAMES[d] for d in days.split(",")]
                listed = names[-1] if len(names) == 1 else ", ".join(names[:-1])
                listed += f" and {names[-1]}" if len(names) > 1 else ""
                return f"every {listed} {at}"
    return f"on the schedule '{cron}' ({timezone})"


def render_welcome(
    ctx: Context,
    *,
    name: str,
    frequency: Frequency,
    preferences_url: str,
    stories: Sequence[Story],
    returning: bool = False,
) -> Rendered:
    """Subject, HTML and text of one reader's welcome (placeholders left for the builder)."""
    settings = ctx.settings
    url = http_url(preferences_url)
    if url is None:
        raise ValueError("the preferences URL must be http(s)")
    weekly = frequency is Frequency.WEEKLY
    cron = settings.weekly_cron if weekly else settings.digest_cron
    site = clean_text(settings.site_name)
    subject = clean_text(f"Welcome {'back ' if returning else ''}to {site}")
    values = {
        "subject": subject,
        "site_name": site,
        "site_url": settings.base_url,
        "postal_address": clean_text(settings.postal_address),
        "greeting": GREETING,
        "unsubscribe_url": UNSUBSCRIBE_URL,
        "preferences_url": url,
        "returning": returning,
        "weekly": weekly,
        "when": describe_schedule(cron, settings.timezone),
        "max_stories": settings.weekly_max_stories if weekly else settings.max_stories,
        "stories": [story_view(story, settings.tz) for story in stories[:TOP_STORIES]],
    }
    html_env, text_env = environments(ctx.templates_dir)
    html = html_env.get_template("welcome.html").render(**values)
    text = tidy_text(text_env.get_template("welcome.txt").render(**values))
    return Rendered(subject, finish_html(html), text, "")
