"""The figures the dashboard and the issue pages show, as plain queries.

Domain functions: a session first, nothing committed.  Everything is one grouped
query per figure (no per-row work), so the dashboard stays quick at 100,000 readers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from ...config import Settings
from ...models import (
    Delivery,
    DeliveryStatus,
    Issue,
    IssueStatus,
    Story,
    Subscriber,
    SubscriberStatus,
    utcnow,
)
from ...stories import unsent_clause

READER_STATUSES = ("active", "pending", "unsubscribed", "bounced", "complained")


def readers_by_status(session: Session) -> dict[str, int]:
    counts = dict.fromkeys(READER_STATUSES, 0)
    for status, n in session.execute(
        select(Subscriber.status, func.count()).group_by(Subscriber.status)
    ):
        counts[SubscriberStatus(status).value] = int(n)
    return counts


def _per_day(session: Session, column: Any, since: datetime) -> dict[date, int]:
    day = func.date(column)
    rows = session.execute(select(day, func.count()).where(column >= since).group_by(day))
    out: dict[date, int] = {}
    for value, n in rows:
        if value is None:
            continue
        key = value if isinstance(value, date) else date.fromisoformat(str(value)[:10])
        out[key] = int(n)
    return out


@dataclass
class ReaderSeries:
    days: list[date]
    active: list[int]
    signups: list[int]


def reader_series(session: Session, days: int = 90, now: datetime | None = None) -> ReaderSeries:
    """Signups per UTC day, and active readers at each day's end, for the last ``days``.

    Active at a day's end is reconstructed backwards from today's count: every
    confirmation after that day is taken off, every unsubscription after it put
    back (readers who later bounced are counted as they are now).
    """
    now = now or utcnow()
    today = now.date()
    first = today - timedelta(days=days - 1)
    since = datetime.combine(first, datetime.min.time(), tzinfo=now.tzinfo)
    signups = _per_day(session, Subscriber.created_at, since)
    confirmed = _per_day(session, Subscriber.confirmed_at, since)
    left = _per_day(session, Subscriber.unsubscribed_at, since)
    active_now = int(
        session.scalar(
            select(func.count())
            .select_from(Subscriber)
            .where(Subscriber.status == SubscriberStatus.ACTIVE)
        )
        or 0
    )
    series_days = [first + timedelta(days=i) for i in range(days)]
    active: list[int] = []
    running = active_now
    for day in reversed(series_days):
        active.append(max(running, 0))
        running += left.get(day, 0) - confirmed.get(day, 0)
    active.reverse()
    return ReaderSeries(series_days, active, [signups.get(d, 0) for d in series_days])


def featured_waiting(session: Session) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(Story).where(Story.featured.is_(True), unsent_clause())
        )
        or 0
    )


@dataclass
class IssueRow:
    id: int
    subject: str
    kind: str
    status: str
    reason: str | None
    created_at: datetime
    started_at: datetime | None
    counts: dict[str, int] = field(default_factory=dict)
    complained: int = 0
    unsubscribed_after: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def n(self, status: str) -> int:
        return self.counts.get(status, 0)


def _complaints(session: Session, ids: Sequence[int]) -> dict[int, int]:
    """Complaints per issue, once the bounce stage records them (0 before)."""
    column = getattr(Delivery, "bounce_type", None)
    if column is None:
        return {}
    rows = session.execute(
        select(Delivery.issue_id, func.count())
        .where(Delivery.issue_id.in_(ids), column == "complaint")
        .group_by(Delivery.issue_id)
    )
    return {int(i): int(n) for i, n in rows}


def issue_rows(session: Session, limit: int = 10, before: int | None = None) -> list[IssueRow]:
    """The newest issues with ledger counts, complaints, and unsubscribes after each."""
    query = select(Issue).order_by(Issue.id.desc()).limit(limit)
    if before is not None:
        query = query.where(Issue.id < before)
    issues = list(session.scalars(query))
    ids = [i.id for i in issues]
    rows = {
        i.id: IssueRow(
            i.id,
            i.subject,
            i.kind.value,
            i.status.value,
            i.status_reason,
            i.created_at,
            i.started_at,
        )
        for i in issues
    }
    for issue_id, status, n in session.execute(
        select(Delivery.issue_id, Delivery.status, func.count())
        .where(Delivery.issue_id.in_(ids))
        .group_by(Delivery.issue_id, Delivery.status)
    ):
        rows[issue_id].counts[DeliveryStatus(status).value] = int(n)
    for issue_id, n in _complaints(session, ids).items():
        rows[issue_id].complained = n
    for row in rows.values():
        row.unsubscribed_after = unsubscribed_after(session, row.id, row.started_at)
    return [rows[i] for i in ids]


def unsubscribed_after(session: Session, issue_id: int, started: datetime | None) -> int:
    """Readers of this issue who left after it went out and before the next one did.

    Counted from the subscribers' side (the few who left in that window), each
    checked against the ledger by primary key: not a walk over every delivery.
    """
    if started is None:
        return 0
    following = session.scalar(
        select(func.min(Issue.started_at)).where(Issue.id > issue_id, Issue.started_at > started)
    )
    conditions = [Subscriber.unsubscribed_at >= started]
    if following is not None:
        conditions.append(Subscriber.unsubscribed_at < following)
    received = (
        select(Delivery.subscriber_id)
        .where(
            Delivery.issue_id == issue_id,
            Delivery.subscriber_id == Subscriber.id,
            Delivery.status == DeliveryStatus.SENT,
        )
        .exists()
    )
    return int(
        session.scalar(
            select(func.count()).select_from(Subscriber).where(and_(*conditions), received)
        )
        or 0
    )


def placeholder_warnings(settings: Settings) -> list[str]:
    """Settings still at their demo values: mail would go out looking unfinished."""
    out = []
    if settings.postal_address.startswith("Set NEWSLETTER_POSTAL_ADDRESS"):
        out.append("NEWSLETTER_POSTAL_ADDRESS is still the placeholder: the footer lacks it.")
    if settings.from_email.endswith("@localhost"):
        out.append(f"NEWSLETTER_FROM is {settings.from_email}: set your real sender address.")
    if "localhost" in settings.base_url or "127.0.0.1" in settings.base_url:
        out.append(
            f"NEWSLETTER_BASE_URL is {settings.base_url}: links in emails will not work "
            "for readers."
        )
    if not settings.smtp_url:
        out.append(
            f"NEWSLETTER_SMTP_URL is not set: mail is written to the {settings.outbox}/ "
            "folder, not sent."
        )
    return out


def paused_issues(session: Session) -> list[tuple[int, str | None]]:
    return [
        (int(i), reason)
        for i, reason in session.execute(
            select(Issue.id, Issue.status_reason).where(Issue.status == IssueStatus.PAUSED)
        )
    ]


def smtp_diagnostics(session: Session, issue_id: int, limit: int = 8) -> list[tuple[str, int]]:
    """The commonest last server replies of an issue's unsuccessful deliveries."""
    rows = session.execute(
        select(Delivery.status, Delivery.last_code, Delivery.last_response, func.count())
        .where(
            Delivery.issue_id == issue_id,
            Delivery.status.in_(
                [DeliveryStatus.FAILED, DeliveryStatus.BOUNCED, DeliveryStatus.QUEUED]
            ),
            Delivery.last_response.is_not(None),
        )
        .group_by(Delivery.status, Delivery.last_code, Delivery.last_response)
        .order_by(func.count().desc())
        .limit(limit)
    ).all()
    return [
        (f"{DeliveryStatus(s).value}: {code or ''} {text}".strip(), int(n))
        for s, code, text, n in rows
    ]
