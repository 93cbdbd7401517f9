"""The timetable's construction and triggers, evaluated at chosen instants.

DST: the digest cron is evaluated in NEWSLETTER_TIMEZONE across the spring-forward
and fall-back changes of America/New_York and Europe/London (2026 dates): 07:00
local stays 07:00 local and fires exactly once per local day, including for times
that fall in the skipped or the repeated hour.  One test drives a real
BackgroundScheduler with a controlled clock (time-machine) through 07:00 on the
day New York springs forward.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine
from apscheduler.events import EVENT_JOB_SUBMITTED, JobSubmissionEvent
from apscheduler.triggers.interval import IntervalTrigger
from click.testing import CliRunner

from newsletter.cli import main
from newsletter.config import ConfigError, Settings
from newsletter.context import Context
from newsletter.timetable.scheduler import (
    DEFAULT_LEASE_TTL,
    DIGEST_JOB,
    FEEDS_JOB,
    UPKEEP_JOB,
    build_scheduler,
    lease_ttl,
    planned_jobs,
)
from newsletter.timetable.triggers import (
    crontab_weekdays,
    digest_trigger,
    fire_times,
    is_repeated_wall_time,
    most_recent_fire,
)
from newsletter.timetable.weekly import WEEKLY_JOB

NEW_YORK = "America/New_York"
LONDON = "Europe/London"

# (zone, a day well before the change, the change day, "spring" | "fall")
DST_CHANGES = [
    (NEW_YORK, date(2026, 3, 8), "spring"),
    (NEW_YORK, date(2026, 11, 1), "fall"),
    (LONDON, date(2026, 3, 29), "spring"),
    (LONDON, date(2026, 10, 25), "fall"),
]


def local(zone: str, *args: int) -> datetime:
    return datetime(*args, tzinfo=ZoneInfo(zone))  # type: ignore[misc]


def week_around(zone: str, day: date) -> tuple[datetime, datetime]:
    tz = ZoneInfo(zone)
    start = datetime.combine(day - timedelta(days=3), datetime.min.time(), tz)
    return start, datetime.combine(day + timedelta(days=4), datetime.min.time(), tz)


@pytest.mark.parametrize(("zone", "change_day", "kind"), DST_CHANGES)
def test_digest_stays_at_7_local_across_dst(
    make_settings: Callable[..., Settings], zone: str, change_day: date, kind: str
) -> None:
    settings = make_settings(NEWSLETTER_TIMEZONE=zone, NEWSLETTER_DIGEST_CRON="0 7 * * *")
    start, end = week_around(zone, change_day)
    fires = [f.astimezone(ZoneInfo(zone)) for f in fire_times(digest_trigger(settings), start, end)]

    assert [f.date() for f in fires] == [change_day + timedelta(days=n) for n in range(-3, 4)], (
        "exactly one digest per local day"
    )
    assert {(f.hour, f.minute, f.second) for f in fires} == {(7, 0, 0)}
    before, after = fires[0].utcoffset(), fires[-1].utcoffset()
    assert before is not None and after is not None
    assert after - before == timedelta(hours=1 if kind == "spring" else -1)
    # the UTC instant moves by the DST shift; the local time does not
    gaps = {b.astimezone(UTC) - a.astimezone(UTC) for a, b in itertools.pairwise(fires)}
    assert gaps == {timedelta(days=1), timedelta(hours=23 if kind == "spring" else 25)}


@pytest.mark.parametrize(
    ("zone", "change_day"), [(NEW_YORK, date(2026, 11, 1)), (LONDON, date(2026, 10, 25))]
)
def test_time_in_the_repeated_hour_fires_once(
    make_settings: Callable[..., Settings], zone: str, change_day: date
) -> None:
    """01:30 happens twice when clocks fall back; the digest fires on the first pass only."""
    settings = make_settings(NEWSLETTER_TIMEZONE=zone, NEWSLETTER_DIGEST_CRON="30 1 * * *")
    start, end = week_around(zone, change_day)
    trigger = digest_trigger(settings)
    fires = fire_times(trigger, start, end)
    days = [f.astimezone(ZoneInfo(zone)).date() for f in fires]
    assert days == sorted(set(days)) and len(days) == 7
    on_the_day = [f for f in fires if f.astimezone(ZoneInfo(zone)).date() == change_day]
    assert len(on_the_day) == 1
    assert not is_repeated_wall_time(on_the_day[0], ZoneInfo(zone))
    # starting the process between the two passes does not fire the second one
    second_pass = on_the_day[0].astimezone(UTC) + timedelta(hours=1)
    assert is_repeated_wall_time(second_pass, ZoneInfo(zone))
    nxt = trigger.get_next_fire_time(None, second_pass - timedelta(minutes=1))
    assert nxt.astimezone(ZoneInfo(zone)).date() == change_day + timedelta(days=1)


@pytest.mark.parametrize(
    ("zone", "change_day", "cron"),
    [
        (NEW_YORK, date(2026, 3, 8), "30 2 * * *"),
        (LONDON, date(2026, 3, 29), "30 1 * * *"),
    ],
)
def test_time_in_the_skipped_hour_still_fires_that_day(
    make_settings: Callable[..., Settings], zone: str, change_day: date, cron: str
) -> None:
    settings = make_settings(NEWSLETTER_TIMEZONE=zone, NEWSLETTER_DIGEST_CRON=cron)
    start, end = week_around(zone, change_day)
    fires = fire_times(digest_trigger(settings), start, end)
    days = [f.astimezone(ZoneInfo(zone)).date() for f in fires]
    assert days == [change_day + timedelta(days=n) for n in range(-3, 4)]


def test_weekday_numbers_follow_crontab(make_settings: Callable[..., Settings]) -> None:
    """APScheduler 3 counts 0 = Monday; crontab (and our users) 0 = Sunday."""
    settings = make_settings(NEWSLETTER_DIGEST_CRON="0 7 * * 1-5", NEWSLETTER_TIMEZONE=LONDON)
    start = local(LONDON, 2026, 6, 1)  # a Monday
    fires = fire_times(digest_trigger(settings), start, start + timedelta(days=14))
    assert [f.strftime("%a") for f in fires] == ["Mon", "Tue", "Wed", "Thu", "Fri"] * 2
    sundays = make_settings(NEWSLETTER_DIGEST_CRON="0 9 * * 0")
    fires = fire_times(digest_trigger(sundays), start, start + timedelta(days=14))
    assert [f.strftime("%a %H") for f in fires] == ["Sun 09", "Sun 09"]


@pytest.mark.parametrize(
    ("field", "names"),
    [
        ("*", "*"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("0", "sun"),
        ("7", "sun"),
        ("0,6", "sat,sun"),
        ("5-7", "fri,sat,sun"),
        ("*/2", "tue,thu,sat,sun"),
        ("mon-fri", "mon,tue,wed,thu,fri"),
        ("SUN,wed", "wed,sun"),
        ("0-6", "*"),
    ],
)
def test_crontab_weekdays(field: str, names: str) -> None:
    assert crontab_weekdays(field) == names


@pytest.mark.parametrize("field", ["8", "fri-mon", "funday", "1-5/0", "*/x"])
def test_bad_weekday_field_is_a_config_error(
    make_settings: Callable[..., Settings], field: str
) -> None:
    with pytest.raises(ValueError):
        crontab_weekdays(field)


def test_seconds_field_only_from_its_own_variable(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(
        NEWSLETTER_DIGEST_CRON="* * * * *", NEWSLETTER_DIGEST_CRON_SECOND="*/2"
    )
    start = local("UTC", 2026, 1, 1, 12, 0, 1)
    fires = fire_times(digest_trigger(settings), start, start + timedelta(seconds=10))
    assert [f.second for f in fires] == [2, 4, 6, 8, 10]
    with pytest.raises(ConfigError, match="DIGEST_CRON_SECOND"):
        make_settings(NEWSLETTER_DIGEST_CRON_SECOND="61")


def test_most_recent_fire(make_settings: Callable[..., Settings]) -> None:
    trigger = digest_trigger(make_settings(NEWSLETTER_TIMEZONE=NEW_YORK))
    seven = local(NEW_YORK, 2026, 3, 8, 7)
    hour = timedelta(hours=1)
    assert most_recent_fire(trigger, seven + timedelta(minutes=59), hour) == seven
    assert most_recent_fire(trigger, seven + timedelta(minutes=61), hour) is None
    assert most_recent_fire(trigger, seven, hour) is None  # [before - window, before)


def test_job_defaults_and_ids(ctx: Context, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(
        NEWSLETTER_FEEDS="http://127.0.0.1:9/a.xml http://127.0.0.1:9/b.xml",
        NEWSLETTER_MISFIRE_GRACE_SECONDS="1234",
        NEWSLETTER_FEED_POLL_MINUTES="7",
    )
    scheduler = build_scheduler(Context(settings, ctx.db), blocking=False)
    scheduler.start(paused=True)  # defaults are applied when jobs reach the job store
    try:
        jobs = {job.id: job for job in scheduler.get_jobs()}
    finally:
        scheduler.shutdown(wait=False)
    assert set(jobs) == {DIGEST_JOB, FEEDS_JOB, UPKEEP_JOB, WEEKLY_JOB}
    for job in jobs.values():
        # job_defaults really applied (top-level kwargs would be silently ignored)
        assert (job.misfire_grace_time, job.coalesce, job.max_instances) == (1234, True, 1)
    assert str(jobs[DIGEST_JOB].trigger.timezone) == settings.timezone
    feeds = jobs[FEEDS_JOB].trigger
    assert isinstance(feeds, IntervalTrigger) and feeds.interval == timedelta(minutes=7)
    assert type(build_scheduler(ctx, blocking=True)).__name__ == "BlockingScheduler"


def test_no_feed_job_without_feeds(ctx: Context) -> None:
    ids = {job.id for job in build_scheduler(ctx, blocking=False).get_jobs()}
    assert ids == {DIGEST_JOB, UPKEEP_JOB, WEEKLY_JOB}


def test_replace_existing_keeps_one_job_per_id(ctx: Context) -> None:
    scheduler = build_scheduler(ctx, blocking=False)
    scheduler.start(paused=True)
    try:
        job = scheduler.get_job(DIGEST_JOB)
        scheduler.add_job(
            job.func, job.trigger, args=job.args, id=DIGEST_JOB, replace_existing=True
        )
        assert [j.id for j in scheduler.get_jobs()].count(DIGEST_JOB) == 1
    finally:
        scheduler.shutdown(wait=False)


def test_planned_jobs_in_local_time(make_settings: Callable[..., Settings], ctx: Context) -> None:
    settings = make_settings(NEWSLETTER_TIMEZONE=NEW_YORK)
    now = local(NEW_YORK, 2026, 3, 7, 12)  # Saturday noon, before the change
    plan = {p.id: p for p in planned_jobs(Context(settings, ctx.db), now=now)}
    nxt = plan[DIGEST_JOB].next_run
    assert nxt is not None and nxt.utcoffset() == timedelta(hours=-4)  # EDT after the change
    assert (nxt.date(), nxt.hour) == (date(2026, 3, 8), 7)
    assert plan[UPKEEP_JOB].next_run is None  # interval: at start-up, then every 5 min


def test_lease_ttl_setting(make_settings: Callable[..., Settings]) -> None:
    assert lease_ttl(make_settings()) == DEFAULT_LEASE_TTL == 60
    assert lease_ttl(make_settings(NEWSLETTER_SCHEDULER_LEASE_TTL="2.5")) == 2.5
    for bad in ("0", "soon", "-1"):
        with pytest.raises(ConfigError, match="SCHEDULER_LEASE_TTL"):
            lease_ttl(make_settings(NEWSLETTER_SCHEDULER_LEASE_TTL=bad))


def test_real_scheduler_fires_digest_at_7_local_on_dst_day(
    make_settings: Callable[..., Settings], ctx: Context
) -> None:
    """A started BackgroundScheduler under a controlled clock submits the digest at
    07:00 EDT on the morning New York springs forward (11:00 UTC, not 12:00)."""
    settings = make_settings(NEWSLETTER_TIMEZONE=NEW_YORK)
    submitted: list[JobSubmissionEvent] = []
    seen = threading.Event()

    def listener(event: JobSubmissionEvent) -> None:
        if event.job_id == DIGEST_JOB:
            submitted.append(event)
            seen.set()

    with time_machine.travel(local(NEW_YORK, 2026, 3, 8, 6, 59, 58), tick=True):
        scheduler = build_scheduler(Context(settings, ctx.db), blocking=False)
        for job in scheduler.get_jobs():  # keep the real trigger, drop the real work
            scheduler.remove_job(job.id)
            if job.id == DIGEST_JOB:
                scheduler.add_job(lambda: None, job.trigger, id=DIGEST_JOB)
        scheduler.add_listener(listener, EVENT_JOB_SUBMITTED)
        scheduler.start()
        try:
            assert seen.wait(10), "the digest job was not submitted at 07:00"
        finally:
            scheduler.shutdown(wait=True)
    (event,) = submitted
    (run_time,) = event.scheduled_run_times
    assert run_time == local(NEW_YORK, 2026, 3, 8, 7)
    assert run_time.utcoffset() == timedelta(hours=-4)


def test_schedule_list_prints_local_times(cli_env: dict[str, str], monkeypatch: Any) -> None:
    monkeypatch.setenv("NEWSLETTER_TIMEZONE", NEW_YORK)
    monkeypatch.setenv("NEWSLETTER_DIGEST_CRON", "0 7 * * 1-5")
    monkeypatch.setenv("NEWSLETTER_FEEDS", "http://127.0.0.1:9/featured.xml")
    with time_machine.travel(local(NEW_YORK, 2026, 3, 6, 12), tick=False):  # a Friday
        result = CliRunner().invoke(main, ["schedule", "--list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("digest  next 2026-03-09 07:00:00 EDT (Mon)")
    assert lines[1].startswith("feeds   at start-up, then at the interval")
    assert "poll 1 feed every 15 min" in lines[1]
    assert lines[2].startswith("upkeep  at start-up")
    assert lines[3].startswith("weekly  next 2026-03-08 08:00:00 EDT (Sun)")
    assert lines[4] == "timetable: not running (the lease is free)"


@pytest.mark.parametrize(
    ("variable", "value"),
    [("NEWSLETTER_DIGEST_CRON_SECOND", "75"), ("NEWSLETTER_SCHEDULER_LEASE_TTL", "soon")],
)
@pytest.mark.parametrize("command", [["schedule"], ["schedule", "--list"], ["run"]])
def test_bad_timetable_settings_are_one_line_errors(
    cli_env: dict[str, str], monkeypatch: Any, variable: str, value: str, command: list[str]
) -> None:
    monkeypatch.setenv(variable, value)
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"Error: {variable.removesuffix('_SECOND')}")
    assert "Traceback" not in result.output
