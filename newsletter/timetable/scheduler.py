"""The timetable: APScheduler 3 jobs for the digest, feed polling and upkeep.

One timetable per deployment.  A process runs the jobs only while it holds the
database lease ``scheduler`` (:mod:`newsletter.lease`), renewed every third of its
TTL by a thread of its own (not a scheduler job: a pool busy with a long send must
not let the lease lapse).  A second ``schedule`` refuses to start and names the
holder; ``run`` serves the web app and stands by, taking over when the holder stops
renewing (killed, frozen, unplugged) and its lease expires.

**Missed runs.**  ``job_defaults`` carry ``misfire_grace_time`` (NEWSLETTER_MISFIRE_
GRACE_SECONDS), ``coalesce=True`` and ``max_instances=1``: that covers a run missed
while the process is up (suspend, a pool still busy).  A run missed while the
process was *down* is another matter: APScheduler 3 only detects misfires of jobs
persisted in a job store.  We deliberately do not persist jobs in an
SQLAlchemyJobStore, because

* every start re-adds the jobs with ``replace_existing=True``, and ``add_job``
  recomputes ``next_run_time`` from the trigger *before* replacing the stored job,
  so the stored (missed) time is overwritten and the misfire is never seen;
* it would pickle job state (callables, arguments, triggers) into a table outside
  our migrations, and the Context passed to jobs is not picklable anyway.

Instead, at start-up :func:`missed_digest` asks the trigger for the most recent
scheduled time within the grace window; if that run was not handled (the digest
job records the last fire time it handled in ``app_state``) and no digest exists
for its local day, the digest job is added with ``next_run_time=now``: it runs
once, immediately, and then follows the cron.  Outside the grace window nothing is
caught up.  Whatever happens, ``issues.digest_date`` is unique, so a day never gets
two digests.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_STOPPED, BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import select

from .. import lease
from ..config import Settings
from ..context import Context
from ..models import Issue, IssueKind, utcnow
from . import jobs
from .triggers import DigestTrigger, digest_trigger, most_recent_fire

log = logging.getLogger("newsletter.scheduler")

LEASE_NAME = "scheduler"
DEFAULT_LEASE_TTL = Settings.scheduler_lease_seconds
UPKEEP_MINUTES = 5
DIGEST_JOB, FEEDS_JOB, UPKEEP_JOB = "digest", "feeds", "upkeep"
FEEDS_EXECUTOR = "feeds"
BOUNCES_JOB = "bounces"


def lease_ttl(settings: Settings) -> float:
    """Seconds the timetable lease lasts without renewal (NEWSLETTER_SCHEDULER_LEASE_TTL).

    60 s by default: a killed holder is replaced within a minute, and renewals
    every 20 s leave room for two missed renewals (a busy database) before it lapses.
    """
    return settings.scheduler_lease_seconds


def missed_digest(ctx: Context, trigger: DigestTrigger, now: datetime) -> datetime | None:
    """The scheduled digest time missed while we were down, if it should run now.

    That is the most recent fire time before ``now`` within the misfire grace
    time, provided the digest job has not handled it and no digest exists for
    its local day.  None otherwise (including "missed by more than the grace").
    """
    grace = timedelta(seconds=ctx.settings.misfire_grace_seconds)
    fire = most_recent_fire(trigger, now, grace)
    if fire is None:
        return None
    day = fire.astimezone(ctx.settings.tz).date()
    with ctx.db.read() as session:
        handled = jobs.last_fire(session)
        if handled is not None and handled >= fire:
            return None
        existing = session.scalar(
            select(Issue.id).where(Issue.kind == IssueKind.DIGEST, Issue.digest_date == day)
        )
    return None if existing is not None else fire


def build_scheduler(
    ctx: Context,
    blocking: bool,
    stop: threading.Event | None = None,
    now: datetime | None = None,
    catch_up: bool = True,
) -> BaseScheduler:
    """A configured, not yet started scheduler holding the timetable's jobs.

    ``stop`` is handed to the jobs that send, so a shutdown ends a send after its
    current batch.  Every job has a fixed id and ``replace_existing=True``.  With
    ``catch_up``, a digest missed while down (:func:`missed_digest`) runs at once.
    """
    settings = ctx.settings
    now = now or utcnow()
    scheduler_class = BlockingScheduler if blocking else BackgroundScheduler
    scheduler: BaseScheduler = scheduler_class(
        timezone=settings.tz,
        # Feeds get an executor of their own: a feed hanging until its deadline can
        # never take a worker the digest or upkeep needs.
        executors={
            "default": ThreadPoolExecutor(max_workers=4),
            FEEDS_EXECUTOR: ThreadPoolExecutor(1),
        },
        job_defaults={
            "misfire_grace_time": settings.misfire_grace_seconds,
            "coalesce": True,
            "max_instances": 1,
        },
    )
    trigger = digest_trigger(settings)
    digest_extra: dict[str, Any] = {}
    missed = missed_digest(ctx, trigger, now) if catch_up else None
    if missed is not None:
        log.warning(
            "digest: the run scheduled for %s was missed while the timetable was down; "
            "running it now (within the %d s grace time)",
            missed.astimezone(settings.tz).strftime("%Y-%m-%d %H:%M:%S %Z"),
            settings.misfire_grace_seconds,
        )
        digest_extra["next_run_time"] = now
    scheduler.add_job(
        _digest_job,
        trigger,
        args=[ctx, trigger, stop],
        id=DIGEST_JOB,
        name=f"digest ({settings.digest_cron}, {settings.timezone})",
        replace_existing=True,
        **digest_extra,
    )
    if settings.feeds:
        scheduler.add_job(
            _feeds_job,
            IntervalTrigger(
                minutes=settings.feed_poll_minutes, start_date=now, timezone=settings.tz
            ),
            args=[ctx, stop],
            id=FEEDS_JOB,
            executor=FEEDS_EXECUTOR,
            name=f"poll {_count(len(settings.feeds), 'feed')} every "
            f"{settings.feed_poll_minutes} min, importing as featured",
            next_run_time=now,
            replace_existing=True,
        )
    if settings.bounce_mailbox:
        minutes = settings.bounce_poll_minutes
        scheduler.add_job(
            _bounces_job,
            IntervalTrigger(minutes=minutes, start_date=now, timezone=settings.tz),
            args=[ctx],
            id=BOUNCES_JOB,
            name=f"read bounces from NEWSLETTER_BOUNCE_MAILBOX every {minutes} min",
            next_run_time=now,
            replace_existing=True,
        )
    scheduler.add_job(
        _upkeep_job,
        IntervalTrigger(minutes=UPKEEP_MINUTES, start_date=now, timezone=settings.tz),
        args=[ctx, stop],
        id=UPKEEP_JOB,
        name=f"upkeep every {UPKEEP_MINUTES} min (resume, retry deferred, purge pending)",
        next_run_time=now,  # "resume unfinished issues at start"
        replace_existing=True,
    )
    from .weekly import WEEKLY_JOB, missed_weekly, weekly_trigger

    weekly_extra: dict[str, Any] = {}
    if catch_up and missed_weekly(ctx, now) is not None:
        log.warning("weekly: the run was missed while the timetable was down; running it now")
        weekly_extra["next_run_time"] = now
    scheduler.add_job(
        _weekly_job,
        weekly_trigger(settings),
        args=[ctx, stop],
        id=WEEKLY_JOB,
        name=f"weekly edition for weekly readers ({settings.weekly_cron}, {settings.timezone})",
        replace_existing=True,
        **weekly_extra,
    )
    return scheduler


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _digest_job(ctx: Context, trigger: DigestTrigger, stop: threading.Event | None) -> None:
    jobs.logged("digest", lambda: jobs.run_digest(ctx, trigger, stop))


def _weekly_job(ctx: Context, stop: threading.Event | None) -> None:
    from .weekly import run_weekly

    jobs.logged("weekly", lambda: run_weekly(ctx, stop))


def _feeds_job(ctx: Context, stop: threading.Event | None) -> None:
    jobs.logged("feeds", lambda: jobs.poll_feeds(ctx, stop))


def _bounces_job(ctx: Context) -> None:
    jobs.logged("bounces", lambda: jobs.poll_bounces(ctx))


def _upkeep_job(ctx: Context, stop: threading.Event | None) -> None:
    jobs.logged("upkeep", lambda: jobs.run_upkeep(ctx, stop))


@dataclass(frozen=True)
class PlannedJob:
    id: str
    name: str
    next_run: datetime | None  # None: an interval job, which runs at start-up and then every N


def planned_jobs(ctx: Context, now: datetime | None = None) -> list[PlannedJob]:
    """The timetable's jobs and the digest's next run time in local time (``schedule --list``).

    Evaluated from the triggers without starting anything or taking the lease.
    Interval jobs count from the timetable's start, so they have no fixed time.
    """
    now = now or utcnow()
    scheduler = build_scheduler(ctx, blocking=False, now=now, catch_up=False)
    planned = []
    for job in scheduler.get_jobs():
        next_run = None
        if not isinstance(job.trigger, IntervalTrigger):
            fire = job.trigger.get_next_fire_time(None, now)
            next_run = fire.astimezone(ctx.settings.tz) if fire else None
        planned.append(PlannedJob(job.id, job.name, next_run))
    return planned


class LeaseLost(RuntimeError):
    """The timetable's lease was taken over while we ran (renewals failed for a whole TTL)."""


class Timetable:
    """The jobs of one process, run only while it holds the ``scheduler`` lease.

    Shutdown (SIGTERM/SIGINT) reaches the main thread as KeyboardInterrupt: out of
    ``BlockingScheduler.start()`` for ``schedule``, out of waitress for ``run``.
    Either way the stop event is set first, so a send in progress ends after its
    current batch, and then the scheduler waits for its jobs before the lease is
    released.
    """

    def __init__(self, ctx: Context, *, blocking: bool, ttl: float | None = None) -> None:
        digest_trigger(ctx.settings)  # a bad cron fails here, before any lease is taken
        self.ctx = ctx
        self.blocking = blocking
        self.ttl = ttl if ttl is not None else lease_ttl(ctx.settings)
        self.holder = lease.Holder.this_process()
        self.stop = threading.Event()  # this term's: tells running sends to end after a batch
        self.lost = False
        self._closing = threading.Event()  # the process is shutting down
        self._term_over = threading.Event()  # this holding period ends (closing or lease lost)
        self._lock = threading.Lock()
        self._scheduler: BaseScheduler | None = None
        self._renewer: threading.Thread | None = None
        self._standby: threading.Thread | None = None

    @property
    def renew_every(self) -> float:
        return self.ttl / 3

    @property
    def running(self) -> bool:
        scheduler = self._scheduler
        return scheduler is not None and scheduler.state != STATE_STOPPED

    def _take_lease(self) -> None:
        with self.ctx.db.write() as session:
            lease.acquire(session, LEASE_NAME, self.holder, timedelta(seconds=self.ttl))

    def _begin_term(self) -> BaseScheduler:
        """Lease taken: start renewing it and build this term's scheduler (not started)."""
        self.lost = False
        self.stop = threading.Event()
        if self._closing.is_set():
            self.stop.set()
        self._renewer = threading.Thread(target=self._renew, name="scheduler-lease", daemon=True)
        self._renewer.start()
        scheduler = build_scheduler(self.ctx, self.blocking, self.stop)
        with self._lock:
            self._scheduler = scheduler
        log.info(
            "timetable started: pid %d on %s holds the %r lease (ttl %gs); jobs: %s",
            self.holder.pid,
            self.holder.host,
            LEASE_NAME,
            self.ttl,
            ", ".join(job.id for job in scheduler.get_jobs()),
        )
        return scheduler

    def _end_term(self) -> None:
        """Stop the jobs (a send finishes its batch), stop renewing, give the lease back."""
        self.stop.set()
        self._term_over.set()
        self._shutdown_scheduler()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        if not self.lost:
            with self.ctx.db.write() as session:
                lease.release(session, LEASE_NAME, self.holder)
            log.info("timetable stopped; lease released")

    def _shutdown_scheduler(self) -> None:
        with self._lock:
            scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None and scheduler.state != STATE_STOPPED:
            scheduler.shutdown(wait=True)

    def _renew(self) -> None:
        deadline = time.monotonic() + self.ttl
        while not self._term_over.wait(self.renew_every):
            try:
                self._take_lease()
                deadline = time.monotonic() + self.ttl
            except lease.LeaseHeld as exc:
                log.error("timetable: lost the lease (%s); stopping the jobs", exc)
                self._lose()
                return
            except Exception as exc:
                if time.monotonic() >= deadline:
                    log.error("timetable: could not renew the lease for %gs (%s)", self.ttl, exc)
                    self._lose()
                    return
                log.warning("timetable: lease renewal failed, retrying: %s", exc)

    def _lose(self) -> None:
        """Someone else may run the jobs now: stop ours without touching their lease."""
        self.lost = True
        self.stop.set()
        self._term_over.set()
        if self.blocking:  # wake the main thread out of BlockingScheduler.start()
            threading.Thread(target=self._shutdown_scheduler, name="scheduler-stop").start()

    def run_blocking(self) -> None:
        """``newsletter schedule``: hold the lease and run the jobs in this thread.

        Raises :class:`lease.LeaseHeld` (naming the holder) when another timetable
        runs, and :class:`LeaseLost` if the lease is lost while running.  Returns
        or raises only after running jobs have finished and the lease is released.
        """
        self._take_lease()
        try:
            self._begin_term().start()  # blocks until shut down
        finally:
            self._end_term()
        if self.lost:
            raise LeaseLost("another process took over the timetable lease")

    def start_background(self) -> None:
        """``newsletter run``: run the jobs in the background, standing by if the lease is taken."""
        self._standby = threading.Thread(target=self._hold_loop, name="scheduler-standby")
        self._standby.start()

    def _hold_loop(self) -> None:
        announced = False
        while not self._closing.is_set():
            try:
                self._take_lease()
            except lease.LeaseHeld as exc:
                if not announced:
                    log.warning(
                        "timetable not started: %s; serving the web app only and standing by "
                        "to take over when that lease expires",
                        exc,
                    )
                    announced = True
                self._closing.wait(self.renew_every)
                continue
            except Exception as exc:
                log.warning("timetable: could not take the lease, retrying: %s", exc)
                self._closing.wait(self.renew_every)
                continue
            if announced:
                log.warning("timetable: the previous holder's lease expired; taking over")
                announced = False
            try:
                self._begin_term().start()
                self._term_over.wait()
            except Exception:  # e.g. the database went away: serve on, retry later
                log.exception("timetable: could not run; retrying in %gs", self.renew_every)
                self._closing.wait(self.renew_every)
            finally:
                self._end_term()
            self._term_over.clear()

    def close(self) -> None:
        """Stop the background timetable: sends end after their batch; the lease is released."""
        self._closing.set()
        self.stop.set()
        self._term_over.set()
        if self._standby is not None:
            self._standby.join()
