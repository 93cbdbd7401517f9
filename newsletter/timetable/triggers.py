"""When the digest fires: a crontab expression turned into a DST-correct APScheduler trigger.

Three things APScheduler 3's ``CronTrigger.from_crontab`` gets wrong or leaves open
for a once-a-day email, fixed here rather than documented as traps:

* **Weekday numbers.**  APScheduler 3 counts 0 = Monday while crontab counts
  0 (or 7) = Sunday, so ``from_crontab("0 7 * * 1-5")`` fires Tuesday to Saturday
  (APScheduler issue #286, only fixed in 4.x).  :func:`crontab_weekdays` rewrites the
  field with day *names*, which both agree on.
* **The repeated hour.**  When clocks fall back, a wall-clock time such as 01:30
  happens twice and the plain trigger fires at both.  :class:`DigestTrigger` fires
  only on the first pass, so a digest cron fires exactly once per local day.  (A time
  skipped by spring-forward fires once, an hour later in wall-clock terms, which is
  APScheduler's behaviour and the right one: the day still gets its digest.)
* **Seconds.**  Crontab has no seconds field and ``NEWSLETTER_DIGEST_CRON`` keeps the
  five standard fields.  ``NEWSLETTER_DIGEST_CRON_SECOND`` (default ``0``) is an
  APScheduler "second" expression for demos and the end-to-end test, which need the
  real trigger to fire within seconds (``* * * * *`` with second ``*/2``) without
  waiting for a minute boundary.

Triggers are evaluated in ``NEWSLETTER_TIMEZONE``, so 07:00 local stays 07:00 local
across daylight-saving changes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo

from apscheduler.triggers.cron import CronTrigger

from ..config import PREFIX, ConfigError, Settings, crontab_weekdays

_MAX_STEPS = 200_000  # bound for walking fire times (a per-second cron over a day is 86 400)


class DigestTrigger(CronTrigger):  # type: ignore[misc]  # apscheduler ships no type hints
    """A CronTrigger that fires once per wall-clock time, even in the repeated hour.

    Stateless on purpose (it must give the same answer with or without a previous
    fire time, e.g. right after a restart): a candidate that is the *second*
    occurrence of an ambiguous local time is skipped, because the first occurrence
    matched the same cron fields an hour earlier.
    """

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        fire: datetime | None = super().get_next_fire_time(previous_fire_time, now)
        while fire is not None and is_repeated_wall_time(fire, self.timezone):
            fire = super().get_next_fire_time(fire, fire)
        return fire


def is_repeated_wall_time(moment: datetime, zone: tzinfo) -> bool:
    """True when ``moment`` is the second pass of a local time that occurs twice."""
    local = moment.astimezone(UTC).astimezone(zone)  # via UTC so ``fold`` is set correctly
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


def digest_trigger(settings: Settings) -> DigestTrigger:
    """The digest's trigger from NEWSLETTER_DIGEST_CRON (+ optional _SECOND) in the time zone."""
    fields = settings.digest_cron.split()
    if len(fields) != 5:
        raise ConfigError(f"{PREFIX}DIGEST_CRON: expected 5 fields, got {settings.digest_cron!r}")
    second = settings.digest_cron_second
    try:
        weekdays = crontab_weekdays(fields[4])
    except ValueError as exc:
        raise ConfigError(f"{PREFIX}DIGEST_CRON: {exc}") from None
    try:
        return DigestTrigger(
            second=second,
            minute=fields[0],
            hour=fields[1],
            day=fields[2],
            month=fields[3],
            day_of_week=weekdays,
            timezone=settings.tz,
        )
    except ValueError as exc:
        raise ConfigError(f"{PREFIX}DIGEST_CRON / {PREFIX}DIGEST_CRON_SECOND: {exc}") from None


def fire_times(trigger: CronTrigger, start: datetime, end: datetime) -> list[datetime]:
    """Every fire time ``t`` with ``start <= t < end`` (a trigger evaluated at chosen instants)."""
    times: list[datetime] = []
    fire: datetime | None = trigger.get_next_fire_time(None, start)
    while fire is not None and fire < end:
        times.append(fire)
        if len(times) > _MAX_STEPS:
            raise ValueError("too many fire times in the window")
        fire = trigger.get_next_fire_time(fire, fire)
    return times


def most_recent_fire(trigger: CronTrigger, before: datetime, window: timedelta) -> datetime | None:
    """The last fire time in ``[before - window, before)``, or None.

    Answers both "which scheduled run was missed while we were down" (``before`` =
    start-up time) and "which scheduled run is this" (``before`` just after now).
    """
    times = fire_times(trigger, before - window, before)
    return times[-1] if times else None
