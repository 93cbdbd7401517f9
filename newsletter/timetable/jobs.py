"""What the timetable runs: the daily digest, feed polling and upkeep.

Each job is a plain function of the Context (and a ``stop`` event) that returns an
outcome object, so tests can drive it at a chosen instant without a scheduler and
assert on counts; :func:`logged` wraps it for the scheduler and writes the one log
line per run ("digest: sent for 2026-03-08: issue 4, 250 queued, sent: 250 sent, ...").

The jobs own their transactions (``ctx.db.write()``), like the CLI does: domain
functions never commit.  The once-a-day rule does not live here: ``issues.digest_date``
is unique and ``digest.build_issue`` raises ``AlreadySentToday``, so whatever the
scheduler does (a restart, a coalesced misfire, a manual ``newsletter send`` the
same morning) a day never gets two digests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from .. import delivery, mail, stories, subscribers
from ..context import Context
from ..models import AppState, Delivery, DeliveryStatus, Issue, IssueStatus, utcnow
from .triggers import DigestTrigger, most_recent_fire

log = logging.getLogger("newsletter.scheduler")

LAST_FIRE_KEY = "scheduler.digest_last_fire"
PURGE_PENDING_AFTER = timedelta(days=7)
_FEEDS_LOCK = threading.Lock()  # one poll of the feeds at a time (the job, a manual call)
_SENDING = threading.Lock()  # the digest job and upkeep never send at once in this process


class Outcome:
    """A job's result; ``describe()`` is the body of its log line."""

    def describe(self) -> str:
        raise NotImplementedError


def logged(name: str, job: Callable[[], Outcome]) -> Outcome | None:
    """Run ``job`` and write exactly one log line with its outcome, counts and duration.

    This is the top of a scheduled job's stack: an exception is logged with its
    traceback (not re-raised, which would only make APScheduler log it a second
    time) and the timetable carries on; the next run tries again.
    """
    started = time.monotonic()
    try:
        outcome = job()
    except Exception as exc:
        log.exception("%s: failed after %.1fs: %s", name, time.monotonic() - started, exc)
        return None
    log.info("%s: %s (%.1fs)", name, outcome.describe(), time.monotonic() - started)
    return outcome


# --- bounces -------------------------------------------------------------------------


@dataclass
class BouncesRun(Outcome):
    messages: int = 0
    by_type: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.by_type.items()))
        return f"read {self.messages} message(s)" + (f": {kinds}" if kinds else "")


def poll_bounces(ctx: Context) -> BouncesRun:
    """Scan NEWSLETTER_BOUNCE_MAILBOX once (processed messages leave the inbox)."""
    from newsletter.bounces.scan import scan

    mailbox = ctx.settings.bounce_mailbox
    if not mailbox:
        return BouncesRun()
    try:
        summary = scan(ctx, [mailbox])
    except Exception as exc:  # recorded for the admin dashboard, then logged by the job
        remember_mailbox_error(ctx, f"{exc} (at {utcnow():%Y-%m-%d %H:%M} UTC)")
        raise
    remember_mailbox_error(ctx, None)
    return BouncesRun(summary.messages, summary.by_type)


MAILBOX_ERROR_KEY = "bounce_mailbox_error"  # app_state: why the last poll failed, if it did


def remember_mailbox_error(ctx: Context, error: str | None) -> None:
    """Keep (or clear) why the bounce mailbox could not be read: the admin warns about it."""
    with ctx.db.write() as session:
        row = session.get(AppState, MAILBOX_ERROR_KEY)
        if error is None:
            if row is not None:
                session.delete(row)
        elif row is None:
            session.add(AppState(key=MAILBOX_ERROR_KEY, value=error[:2000]))
        else:
            row.value = error[:2000]


# --- feeds ---------------------------------------------------------------------------


@dataclass
class FeedsRun(Outcome):
    polled: int = 0
    new: int = 0
    unchanged: int = 0
    errors: list[str] = field(default_factory=list)

    def describe(self) -> str:
        feeds = "feed" if self.polled == 1 else "feeds"
        text = f"polled {self.polled} {feeds}: {self.new} new stories, {self.unchanged} unchanged"
        if self.errors:
            text += f", {len(self.errors)} failed ({'; '.join(self.errors)})"
        return text


def poll_feeds(ctx: Context, stop: threading.Event | None = None) -> FeedsRun:
    """Poll every NEWSLETTER_FEEDS URL once, importing new entries as featured.

    Conditional GETs (ETag / Last-Modified kept in ``feed_states``) make an
    unchanged feed a 304.  The fetch happens outside any write transaction
    (``poll_feed_db``), so a slow feed never holds SQLite's write lock; a broken
    feed costs only itself: its error is named in the log line.
    """
    run = FeedsRun()
    with _FEEDS_LOCK:
        for url in ctx.settings.feeds:
            if stop is not None and stop.is_set():
                break
            run.polled += 1
            try:
                result = stories.poll_feed_db(
                    ctx.db,
                    url,
                    feature=True,
                    timeout=ctx.settings.feed_timeout,
                    allow_private=ctx.settings.feeds_allow_private,
                    stop=stop,
                )
            except Exception as exc:  # e.g. the database busy: this feed only, not the rest
                log.exception("feeds: %s: %s", url, exc)
                run.errors.append(f"{url}: {type(exc).__name__}: {exc}")
                continue
            if result.error:
                run.errors.append(f"{url}: {result.error}")
            elif result.not_modified:
                run.unchanged += 1
            else:
                run.new += result.added
                if result.left_out:
                    log.info("feeds: %s", result.describe())
    return run


# --- digest --------------------------------------------------------------------------


def describe_send(summary: delivery.SendSummary) -> str:
    """One line of counts from a send summary: "sent: 250 sent, 1 failed, ..."."""
    run = summary.run
    text = (
        f"{summary.status.value}: {run.sent} sent, {run.failed} failed, {run.bounced} bounced, "
        f"{run.skipped} skipped, {summary.left_queued} still queued"
    )
    if summary.next_retry is not None and summary.left_queued:
        text += f", next retry {summary.next_retry:%H:%M:%S} UTC"
    if summary.reason:
        text += f" ({summary.reason})"
    return text


@dataclass
class DigestRun(Outcome):
    day: date
    outcome: str  # "sent" | "nothing new" | "already sent today" | "queued" ...
    issue_id: int | None = None
    queued: int = 0
    summary: delivery.SendSummary | None = None

    def describe(self) -> str:
        text = f"{self.outcome} for {self.day.isoformat()}"
        if self.issue_id is not None:
            text += f": issue {self.issue_id}, {self.queued} queued"
        if self.summary is not None:
            text += f", {describe_send(self.summary)}"
        return text


def digest_day(ctx: Context, trigger: DigestTrigger, now: datetime) -> tuple[date, datetime]:
    """The local day this run is for, and the scheduled fire time it stands for.

    The day comes from the scheduled time, not the wall clock at run time, so a
    23:55 digest that runs late after midnight is still the previous day's.  When
    no fire time is within the grace window (a manual run), it is today's.
    """
    grace = timedelta(seconds=ctx.settings.misfire_grace_seconds)
    fire = most_recent_fire(trigger, now + timedelta(microseconds=1), grace) or now
    return fire.astimezone(ctx.settings.tz).date(), fire


def record_fire(session: Session, fire: datetime) -> None:
    """Remember the last scheduled run handled, so a restart does not re-run it."""
    row = session.get(AppState, LAST_FIRE_KEY)
    value = fire.astimezone(UTC).isoformat()
    if row is None:
        session.add(AppState(key=LAST_FIRE_KEY, value=value))
    elif row.value < value:  # ISO strings of UTC times sort by time
        row.value = value


def last_fire(session: Session) -> datetime | None:
    """The last scheduled digest run that was handled (sent, nothing new or already sent)."""
    value = session.scalar(select(AppState.value).where(AppState.key == LAST_FIRE_KEY))
    return datetime.fromisoformat(value) if value else None


def run_digest(
    ctx: Context,
    trigger: DigestTrigger,
    stop: threading.Event | None = None,
    now: datetime | None = None,
) -> DigestRun:
    """Build the day's digest from the stories imported so far, queue it, send it.

    The feeds are not polled here: that is the feeds job's work, on its own
    schedule and executor, so a feed that hangs until its deadline never delays
    (or, under ``max_instances=1``, skips) the digest.

    Nothing new -> nothing is built or sent ("nothing new").  A digest already
    exists for the day -> "already sent today".  ``stop`` ends the send after its
    current batch; what is left stays queued and upkeep resumes it.  Building,
    queueing and recording the handled fire time are one transaction.
    """
    now = now or utcnow()
    day, fire = digest_day(ctx, trigger, now)
    with _SENDING:  # upkeep never resumes an issue this job is about to send
        issue_id: int | None = None
        queued = 0
        try:
            with ctx.db.write() as session:
                issue = mail.build_issue(session, ctx, today=day)
                if issue is not None:
                    issue_id = issue.id
                    queued = delivery.enqueue(session, issue.id)
                record_fire(session, fire)
        except mail.AlreadySentToday:
            with ctx.db.write() as session:
                record_fire(session, fire)
            return DigestRun(day, "already sent today")
        if issue_id is None:
            return DigestRun(day, "nothing new")
        if stop is not None and stop.is_set():
            return DigestRun(day, "queued (stopping; upkeep sends it)", issue_id, queued)
        try:
            summary = delivery.send_issue(ctx, issue_id, stop=stop)
        except delivery.LeaseHeld as exc:  # another process's upkeep got to it first
            return DigestRun(day, f"queued ({exc})", issue_id, queued)
    return DigestRun(day, "sent" if summary.ok else "sending", issue_id, queued, summary)


# --- upkeep --------------------------------------------------------------------------


@dataclass
class UpkeepRun(Outcome):
    resumed: list[delivery.SendSummary] = field(default_factory=list)
    busy: list[int] = field(default_factory=list)  # issues another sender holds
    purged: int = 0

    def describe(self) -> str:
        text = f"purged {self.purged} expired pending subscribers, "
        text += f"resumed {len(self.resumed)} issues"
        for summary in self.resumed:
            text += f"; issue {summary.issue_id} {describe_send(summary)}"
        if self.busy:
            text += f"; skipped issues being sent elsewhere: {self.busy}"
        return text


def due_issue_ids(session: Session, now: datetime) -> list[int]:
    """Issues still ``sending`` that have work due now.

    Due means a queued row whose ``next_attempt_at`` has passed (or was never
    set: a send stopped or crashed before reaching it), a row a crashed sender
    left ``sending``, or no unfinished row at all (a crash between the last batch
    and settling the issue's status).  An issue whose only remaining rows are
    deferred into the future is left alone until they are due.
    """
    unfinished = (DeliveryStatus.QUEUED, DeliveryStatus.SENDING)
    due = select(Delivery.issue_id).where(
        or_(
            Delivery.status == DeliveryStatus.SENDING,
            and_(
                Delivery.status == DeliveryStatus.QUEUED,
                or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
            ),
        )
    )
    pending = select(Delivery.issue_id).where(Delivery.status.in_(unfinished))
    return list(
        session.scalars(
            select(Issue.id)
            .where(Issue.status == IssueStatus.SENDING)
            .where(or_(Issue.id.in_(due), Issue.id.not_in(pending)))
            .order_by(Issue.id)
        )
    )


def run_upkeep(
    ctx: Context, stop: threading.Event | None = None, now: datetime | None = None
) -> UpkeepRun:
    """Finish what a crash or a deferral left, and forget stale signups.

    Every issue with due work (:func:`due_issue_ids`) is sent on; one that another
    process is sending (its ``issue:<id>`` lease) is skipped until next time.
    Pending web signups unconfirmed after 7 days are deleted: personal data kept
    without consent.  Runs at start-up ("resume unfinished issues") and then
    every few minutes ("retry deferred deliveries").
    """
    now = now or utcnow()
    run = UpkeepRun()
    with ctx.db.write() as session:
        run.purged = subscribers.purge_expired_pending(session, PURGE_PENDING_AFTER, now=now)
    if not _SENDING.acquire(blocking=False):
        return run  # the digest job is sending; its leftovers are due next time
    try:
        with ctx.db.read() as session:
            ids = due_issue_ids(session, now)
        for issue_id in ids:
            if stop is not None and stop.is_set():
                break
            with ctx.db.read() as session:
                busy = bool(delivery.other_senders(session, issue_id))
            if busy:  # live senders (workers) have it; they take back what a dead one left
                run.busy.append(issue_id)
                continue
            try:
                run.resumed.append(delivery.send_issue(ctx, issue_id, stop=stop))
            except delivery.IssueStateError:
                continue  # cancelled or paused meanwhile: nothing to do
    finally:
        _SENDING.release()
    return run
