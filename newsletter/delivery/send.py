"""Issue lifecycle around the ledger: create and enqueue, send, resume, cancel, retry
failures (DESIGN.md "Delivery semantics").

``send_issue`` is the one entry point for sending.  Any number of processes, on any
number of machines, may run it for the same issue at once: each is one sender that
claims batches of rows (:class:`newsletter.engine.Run`), and rows a dead sender
left ``sending`` are taken back once its claim expires.  The issue's status is then
decided from the ledger (never from counters kept in memory), and its completion
exactly once, by whichever sender sees nothing left.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..context import Context
from ..lease import Holder, LeaseHeld
from ..models import DeliveryStatus, Issue, IssueStatus, Subscriber, SubscriberStatus, utcnow
from . import ledger, quota
from .engine import BuildFn, Progress, Run, RunStats
from .ledger import enqueue
from .transport import Transport, open_transport

__all__ = [
    "AlreadyFinished",
    "IssueStateError",
    "LeaseHeld",
    "Progress",
    "SendSummary",
    "active_count",
    "cancel",
    "enqueue",
    "resume",
    "resume_unfinished",
    "retry_failed",
    "send_issue",
    "unfinished_issue",
]


class IssueStateError(ValueError):
    """The issue cannot do that in its current state (message says why and what to do)."""


class AlreadyFinished(IssueStateError):
    """The issue is already sent (perhaps by another process a moment ago)."""


@dataclass
class SendSummary:
    """Where an issue stands after a run: ledger counts plus what this run did."""

    issue_id: int
    subject: str
    status: IssueStatus
    reason: str | None
    counts: dict[DeliveryStatus, int]
    run: RunStats
    next_retry: datetime | None

    @property
    def left_queued(self) -> int:
        return self.counts[DeliveryStatus.QUEUED] + self.counts[DeliveryStatus.SENDING]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def rate(self) -> float:
        return self.run.sent / self.run.elapsed if self.run.elapsed > 0 else 0.0

    @property
    def until_tomorrow(self) -> bool:
        """Stopped by the daily quota (ours or the relay's): the rest wait for tomorrow."""
        return self.run.halt == "quota"

    @property
    def ok(self) -> bool:
        """Finished with every reader handled and no failures (bounces are not ours)."""
        return (
            self.status is IssueStatus.SENT
            and self.counts[DeliveryStatus.FAILED] == 0
            and self.left_queued == 0
        )


def active_count(session: Session) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(Subscriber)
            .where(Subscriber.status == SubscriberStatus.ACTIVE)
        )
        or 0
    )


def unfinished_issue(session: Session) -> Issue | None:
    """The oldest issue still ``sending`` or ``paused``: ``send`` resumes it first."""
    return session.scalars(
        select(Issue)
        .where(Issue.status.in_([IssueStatus.SENDING, IssueStatus.PAUSED]))
        .order_by(Issue.id)
        .limit(1)  # pragma: no mutate (equivalent: .first() takes one row either way)
    ).first()


def _default_build(ctx: Context, issue: Issue) -> BuildFn:
    from ..mail.variants import issue_builder
    from .variants import load_variants

    with ctx.db.read() as session:  # readers' section renderings (usually none)
        variants, assignment = load_variants(session, issue.id)
    whole = (issue.subject, issue.html, issue.text)
    return issue_builder(ctx, issue.id, whole, variants, assignment, kind=issue.kind.value)


def other_senders(session: Session, issue_id: int) -> list[tuple[str, str, int]]:
    """Live senders on the issue as (host, pid, rows they hold): ``send`` names them."""
    out = []
    for sender, rows in sorted(ledger.claim_holders(session, issue_id, utcnow()).items()):
        host, _, rest = sender.rpartition(":")[0].rpartition(":")
        out.append((host, rest, rows))
    return out


def send_issue(
    ctx: Context,
    issue_id: int,
    *,
    progress: Callable[[Progress], None] | None = None,
    stop: threading.Event | None = None,
    transport: Transport | None = None,
    build: BuildFn | None = None,
) -> SendSummary:
    """Send (or help send) an issue, beside any other senders working on it.

    ``stop`` ends the run after the messages in flight (the rest stay queued).
    """
    holder = Holder.this_process()
    with ctx.db.write() as session:
        issue = get_issue(session, issue_id)
        if issue.status is not IssueStatus.SENDING:
            raise _state_error(issue)
        if issue.started_at is None:
            issue.started_at = utcnow()
    if build is None:
        build = _default_build(ctx, issue)
    own_transport = transport is None
    if transport is None:
        transport = open_transport(ctx.settings)
    try:
        stats = Run(ctx, issue_id, transport, build, holder, progress, stop).run()
    finally:
        if own_transport:
            transport.close()
    return _finish(ctx, issue_id, stats)


def _state_error(issue: Issue) -> IssueStateError:
    if issue.status is IssueStatus.SENT:
        return AlreadyFinished(_not_sendable(issue))
    return IssueStateError(_not_sendable(issue))


def _not_sendable(issue: Issue) -> str:
    if issue.status is IssueStatus.PAUSED:
        return (
            f"issue {issue.id} is paused: {issue.status_reason}. Fix the cause, then run "
            f"'newsletter issues resume {issue.id}'"
        )
    return f"issue {issue.id} is {issue.status.value}: nothing to send"


def _finish(ctx: Context, issue_id: int, stats: RunStats) -> SendSummary:
    """Settle the issue's status from the ledger itself.

    The issue row is locked first (``FOR UPDATE`` on PostgreSQL; SQLite's write
    transaction is exclusive anyway), so when several senders finish at once the
    completion is decided exactly once, by the first to see nothing left.
    """
    with ctx.db.write() as session:
        issue = session.scalars(
            select(Issue)
            .where(Issue.id == issue_id)
            .with_for_update()
            # (a new Session's identity map is empty: nothing stale to refresh)
            .execution_options(populate_existing=True)  # pragma: no mutate (equivalent: new map)
        ).one()
        counts = ledger.counts(session, issue_id)
        left = counts[DeliveryStatus.QUEUED] + counts[DeliveryStatus.SENDING]
        if stats.halt == "pause" and issue.status is IssueStatus.SENDING:
            issue.status = IssueStatus.PAUSED
            issue.status_reason = stats.reason
        elif issue.status is IssueStatus.SENDING and left == 0:
            issue.status = IssueStatus.SENT
            issue.finished_at = utcnow()
            failed = counts[DeliveryStatus.FAILED]
            issue.status_reason = f"{failed} deliveries failed" if failed else None
        elif issue.status is IssueStatus.SENDING:
            why = stats.reason or (
                f"last error: {stats.last_retry_text}" if stats.last_retry_text else None
            )
            issue.status_reason = f"{left} deliveries still queued" + (f" ({why})" if why else "")
        next_retry = ledger.next_retry(session, issue_id)  # None when nothing is queued
        return SendSummary(
            issue_id=issue_id,
            subject=issue.subject,
            status=issue.status,
            reason=issue.status_reason,
            counts=counts,
            run=stats,
            next_retry=next_retry,
        )


def get_issue(session: Session, issue_id: int) -> Issue:
    """The issue, or :class:`IssueStateError` naming the missing id."""
    issue = session.get(Issue, issue_id)
    if issue is None:
        raise IssueStateError(f"there is no issue {issue_id}")
    return issue


def resume(
    ctx: Context,
    issue_id: int,
    *,
    progress: Callable[[Progress], None] | None = None,
    stop: threading.Event | None = None,
) -> SendSummary:
    """``issues resume``: un-pause if paused, then send what is left."""
    with ctx.db.write() as session:
        issue = get_issue(session, issue_id)
        if issue.status in (IssueStatus.SENT, IssueStatus.CANCELLED):
            raise _state_error(issue)
        quota.clear_relay_refusal(session)  # a person resumes: let the relay answer again
        if issue.status is IssueStatus.PAUSED:
            issue.status = IssueStatus.SENDING
            issue.status_reason = None
    return send_issue(ctx, issue_id, progress=progress, stop=stop)


def resume_unfinished(
    ctx: Context,
    *,
    progress: Callable[[Progress], None] | None = None,
    stop: threading.Event | None = None,
) -> list[SendSummary]:
    """Continue every issue still ``sending`` (paused ones wait for a human).

    Issues another process finished meanwhile are skipped; one another process is
    sending is joined (this process becomes one more sender on it: ``send_issue``
    takes no lease, so there is nothing to wait for).
    """
    with ctx.db.read() as session:
        ids = list(
            session.scalars(
                select(Issue.id).where(Issue.status == IssueStatus.SENDING).order_by(Issue.id)
            )
        )
    summaries = []
    for issue_id in ids:
        with contextlib.suppress(AlreadyFinished):  # another process finished it meanwhile
            summaries.append(send_issue(ctx, issue_id, progress=progress, stop=stop))
    return summaries


def cancel(session: Session, issue_id: int) -> Issue:
    """Stop an issue for good; its stories count as unsent again (see stories.unsent_clause).

    A sender working on it notices at its next write (a fraction of a second) and stops
    after the messages in flight; what was already sent stays recorded as sent.
    """
    issue = get_issue(session, issue_id)
    if issue.status in (IssueStatus.SENT, IssueStatus.CANCELLED):
        raise IssueStateError(f"issue {issue_id} is already {issue.status.value}")
    issue.status = IssueStatus.CANCELLED
    issue.finished_at = utcnow()
    issue.status_reason = "cancelled"
    return issue


def retry_failed(
    ctx: Context,
    issue_id: int,
    *,
    progress: Callable[[Progress], None] | None = None,
    stop: threading.Event | None = None,
) -> SendSummary:
    """Put failed deliveries back in the queue and send them (bounced ones stay bounced)."""
    with ctx.db.write() as session:
        issue = get_issue(session, issue_id)
        if issue.status is IssueStatus.CANCELLED:
            raise IssueStateError(f"issue {issue_id} is cancelled")
        n = ledger.requeue_failed(session, issue_id)
        if n == 0 and issue.status is IssueStatus.SENT:
            raise IssueStateError(f"issue {issue_id} has no failed deliveries")
        issue.status = IssueStatus.SENDING
        issue.status_reason = None
        issue.finished_at = None
    return send_issue(ctx, issue_id, progress=progress, stop=stop)
