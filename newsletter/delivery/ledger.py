"""The deliveries table as a ledger: who is queued, who is in flight, who got it.

Every function takes a session and leaves the commit to the caller (the delivery
loop commits each claim and each batch of outcomes as its own short transaction).
All statements are Core (no ORM objects per recipient), so memory stays flat
whatever the size of the list and 100,000 rows enqueue in one statement.

The invariants the delivery semantics rest on live here:

* a row becomes ``sending`` in the same transaction that checks the subscriber is
  still active, before its bytes leave the process (a crash leaves it ``sending``:
  retried on resume, the only rows that can ever be duplicated);
* a row becomes ``sent`` only when the server answered 2xx to the end of DATA;
* nothing else ever moves a row out of ``queued``, so nothing is skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Select, Table, and_, bindparam, func, insert, literal, select, update
from sqlalchemy.orm import Session

from ..models import (
    Delivery,
    DeliveryStatus,
    Issue,
    IssueStatus,
    Subscriber,
    SubscriberStatus,
    utcnow,
)
from ..subscribers import mark_bounced
from .outcome import Outcome, SendOutcome
from .quota import note_relay_refusal

D = cast(Table, Delivery.__table__)
S = cast(Table, Subscriber.__table__)


@dataclass(frozen=True, slots=True)
class Job:
    """One claimed recipient, everything a worker needs and nothing more."""

    subscriber_id: int
    email: str
    name: str


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one job (``outcome=None``: claimed but never pushed: release it)."""

    subscriber_id: int
    outcome: SendOutcome | None
    message_id: str | None = None
    retry_at: datetime | None = None


@dataclass(frozen=True)
class Claim:
    jobs: list[Job]
    skipped: int
    issue_status: IssueStatus | None
    last_id: int | None  # highest subscriber id looked at (keyset cursor)


def enqueue(session: Session, issue_id: int) -> int:
    """Queue the issue for every subscriber active right now: one ``INSERT … SELECT``."""
    already = session.scalar(select(func.count()).select_from(D).where(D.c.issue_id == issue_id))
    if already:
        raise ValueError(f"issue {issue_id} is already enqueued ({already} deliveries)")
    source = select(
        literal(issue_id),
        S.c.id,
        literal(DeliveryStatus.QUEUED.value),
        literal(0),
    ).where(S.c.status == SubscriberStatus.ACTIVE.value)
    result = session.execute(
        insert(D).from_select(["issue_id", "subscriber_id", "status", "attempts"], source)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def reset_in_flight(session: Session, issue_id: int) -> int:
    """Rows a dead sender left ``sending`` go back to the queue (at-least-once)."""
    result = session.execute(
        update(D)
        .where(D.c.issue_id == issue_id, D.c.status == DeliveryStatus.SENDING.value)
        .values(status=DeliveryStatus.QUEUED.value)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def _candidates(issue_id: int) -> Select[Any]:
    """Queued rows with their subscriber, locked for the claiming transaction.

    PostgreSQL: ``FOR UPDATE OF deliveries SKIP LOCKED``, so a concurrent claimer can
    neither take the same rows nor block on them, and ``status = 'queued'`` is
    re-checked on the locked row.  SQLite omits the clause (BEGIN IMMEDIATE already
    serialises writers).
    """
    return (
        select(D.c.subscriber_id, S.c.email, S.c.name, S.c.status)
        .join(S, S.c.id == D.c.subscriber_id)
        .where(D.c.issue_id == issue_id, D.c.status == DeliveryStatus.QUEUED.value)
        .with_for_update(skip_locked=True, of=D)
    )


def claim_next(session: Session, issue_id: int, after_id: int, limit: int) -> Claim:
    """Claim the next keyset batch of queued rows after ``after_id`` (ascending ids)."""
    rows = session.execute(
        _candidates(issue_id)
        .where(D.c.subscriber_id > after_id)
        .order_by(D.c.subscriber_id)
        .limit(limit)
    ).all()
    return _claim(session, issue_id, rows)


def claim_ids(session: Session, issue_id: int, ids: Sequence[int]) -> Claim:
    """Claim specific rows (due retries), if they are still queued."""
    rows = session.execute(
        _candidates(issue_id).where(D.c.subscriber_id.in_(list(ids))).order_by(D.c.subscriber_id)
    ).all()
    return _claim(session, issue_id, rows)


def _claim(session: Session, issue_id: int, rows: Sequence[Any]) -> Claim:
    status = issue_status(session, issue_id)
    if status is not IssueStatus.SENDING:
        return Claim([], 0, status, None)
    jobs: list[Job] = []
    gone: list[int] = []
    for sid, email, name, sub_status in rows:
        if sub_status == SubscriberStatus.ACTIVE.value:
            jobs.append(Job(sid, email, name or ""))
        else:  # unsubscribed or bounced since enqueue: recorded, never mailed
            gone.append(sid)
    if gone:
        session.execute(
            update(D)
            .where(D.c.issue_id == issue_id, D.c.subscriber_id.in_(gone))
            .values(status=DeliveryStatus.SKIPPED.value, next_attempt_at=None)
        )
    if jobs:
        session.execute(
            update(D)
            .where(
                D.c.issue_id == issue_id,
                D.c.status == DeliveryStatus.QUEUED.value,
                D.c.subscriber_id.in_([j.subscriber_id for j in jobs]),
            )
            .values(status=DeliveryStatus.SENDING.value)
        )
    return Claim(jobs, len(gone), status, rows[-1][0] if rows else None)


def issue_status(session: Session, issue_id: int) -> IssueStatus | None:
    value = session.scalar(select(Issue.status).where(Issue.id == issue_id))
    return IssueStatus(value) if value is not None else None


_UPDATE = (
    update(D)
    .where(D.c.issue_id == bindparam("b_issue"), D.c.subscriber_id == bindparam("b_sid"))
    .values(
        status=bindparam("b_status"),
        attempts=D.c.attempts + bindparam("b_inc"),
        next_attempt_at=bindparam("b_next"),
        last_code=bindparam("b_code"),
        last_response=bindparam("b_response"),
        message_id=bindparam("b_mid"),
        sent_at=bindparam("b_sent"),
    )
)
_RELEASE = (
    update(D)
    .where(
        D.c.issue_id == bindparam("b_issue"),
        D.c.subscriber_id == bindparam("b_sid"),
        D.c.status == DeliveryStatus.SENDING.value,
    )
    .values(status=DeliveryStatus.QUEUED.value)
)

_STATUS_FOR = {
    Outcome.SENT: DeliveryStatus.SENT,
    Outcome.RETRY: DeliveryStatus.QUEUED,
    Outcome.POLICY: DeliveryStatus.QUEUED,  # not the reader's fault: stays queued
    Outcome.QUOTA: DeliveryStatus.QUEUED,  # the relay's daily quota: tomorrow, no attempt used
    Outcome.BOUNCE: DeliveryStatus.BOUNCED,
    Outcome.FAILED: DeliveryStatus.FAILED,
}


def record(
    session: Session, issue_id: int, results: Iterable[Result], give_up_after: int | None = None
) -> list[int]:
    """Write a batch of outcomes with two ``executemany`` statements.

    Returns the subscriber ids that bounced (their subscriber rows are marked
    ``bounced`` here too, in the same transaction).  A row deferred again once it
    has had ``give_up_after`` attempts in all (over every run and resume) becomes
    ``failed``: like an MTA's queue lifetime, so upkeep does not retry a dead
    address forever; ``issues retry-failed`` gives it fresh attempts.
    """
    now = utcnow()
    updates: list[dict[str, Any]] = []
    releases: list[dict[str, Any]] = []
    bounced: list[int] = []
    deferred: list[int] = []
    for r in results:
        if r.outcome is None:
            releases.append({"b_issue": issue_id, "b_sid": r.subscriber_id})
            continue
        o = r.outcome
        sent = o.outcome is Outcome.SENT
        updates.append(
            {
                "b_issue": issue_id,
                "b_sid": r.subscriber_id,
                "b_status": _STATUS_FOR[o.outcome].value,
                "b_inc": 0 if o.outcome in (Outcome.POLICY, Outcome.QUOTA) else 1,
                "b_next": r.retry_at if o.outcome is Outcome.RETRY else None,
                "b_code": o.code,
                "b_response": o.response[:500] if o.response else None,
                "b_mid": r.message_id if sent else None,
                "b_sent": now if sent else None,
            }
        )
        if o.outcome is Outcome.QUOTA:
            note_relay_refusal(session, o.text)
        if o.outcome is Outcome.BOUNCE:
            bounced.append(r.subscriber_id)
        elif o.outcome is Outcome.RETRY:
            deferred.append(r.subscriber_id)
    if updates:
        session.execute(_UPDATE, updates)
    if deferred and give_up_after is not None:
        session.execute(
            update(D)
            .where(
                D.c.issue_id == issue_id,
                D.c.subscriber_id.in_(deferred),
                D.c.status == DeliveryStatus.QUEUED.value,
                D.c.attempts >= give_up_after,
            )
            .values(status=DeliveryStatus.FAILED.value, next_attempt_at=None)
        )
    if releases:
        session.execute(_RELEASE, releases)
    for sid in bounced:
        mark_subscriber_bounced(session, sid)
    return bounced


def mark_subscriber_bounced(session: Session, subscriber_id: int) -> None:
    """Never mail this address again."""
    mark_bounced(session, subscriber_id)


def counts(session: Session, issue_id: int) -> dict[DeliveryStatus, int]:
    """Deliveries of the issue by status (every status present, zero when none)."""
    out = dict.fromkeys(DeliveryStatus, 0)
    for status, n in session.execute(
        select(D.c.status, func.count()).where(D.c.issue_id == issue_id).group_by(D.c.status)
    ):
        out[DeliveryStatus(status)] = int(n)
    return out


def requeue_failed(session: Session, issue_id: int) -> int:
    """``issues retry-failed``: failed rows go back to the queue with fresh attempts."""
    result = session.execute(
        update(D)
        .where(and_(D.c.issue_id == issue_id, D.c.status == DeliveryStatus.FAILED.value))
        .values(status=DeliveryStatus.QUEUED.value, attempts=0, next_attempt_at=None)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def next_retry(session: Session, issue_id: int) -> datetime | None:
    """Earliest planned retry of the rows still queued (shown by the CLI)."""
    value: datetime | None = session.scalar(
        select(func.min(Delivery.next_attempt_at)).where(
            Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.QUEUED
        )
    )
    return value
