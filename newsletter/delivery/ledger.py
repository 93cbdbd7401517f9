"""The deliveries table as a ledger: who is queued, who is in flight, who got it.

Every function takes a session and leaves the commit to the caller (the delivery
loop commits each claim and each batch of outcomes as its own short transaction).
All statements are Core (no ORM objects per recipient), so memory stays flat
whatever the size of the list and 100,000 rows enqueue in one statement.

The invariants the delivery semantics rest on live here:

* a row becomes ``sending`` in the same transaction that checks the subscriber is
  still active, before its bytes leave the process, with the claiming sender's id
  and a claim expiry (a crash leaves it ``sending``: taken back once the claim has
  expired, the only rows that can ever be duplicated);
* a row claimed by a live sender (its claim renewed in time) is never touched by
  another: only expired claims are taken back (DESIGN "Delivery semantics" 7);
* a row becomes ``sent`` only when the server answered 2xx to the end of DATA;
* nothing else ever moves a row out of ``queued``, so nothing is skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    Executable,
    Select,
    String,
    Table,
    and_,
    bindparam,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
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
    """Queue the issue for its readers right now: one ``INSERT … SELECT``.

    Who they are depends on the issue's kind (``subscribers.preferences.audience``:
    daily or weekly readers, everyone for a manual issue; paused readers wait);
    readers who chose sections are then pointed at their rendering
    (``variants.assign_variants``).
    """
    from ..subscribers.preferences import audience
    from .variants import assign_variants

    already = session.scalar(select(func.count()).select_from(D).where(D.c.issue_id == issue_id))
    if already:
        raise ValueError(f"issue {issue_id} is already enqueued ({already} deliveries)")
    source = select(
        literal(issue_id),
        S.c.id,
        literal(DeliveryStatus.QUEUED.value),
        literal(0),
    ).where(S.c.status == SubscriberStatus.ACTIVE.value)
    kind = session.scalar(select(Issue.kind).where(Issue.id == issue_id))
    if kind is not None:
        source = source.where(audience(kind))
    session.execute(
        insert(D).from_select(["issue_id", "subscriber_id", "status", "attempts"], source)
    )
    assign_variants(session, issue_id)
    # Counted, not ``rowcount``: after INSERT … SELECT psycopg reports -1 on PostgreSQL.
    return int(
        session.scalar(select(func.count()).select_from(D).where(D.c.issue_id == issue_id)) or 0
    )


@dataclass(frozen=True, slots=True)
class Claimant:
    """Who claims rows (``host:pid:token``) and until when the claim holds."""

    sender: str
    expires_at: datetime


def take_back_expired(
    session: Session, issue_id: int, now: datetime, dead: Sequence[str] = ()
) -> int:
    """Rows whose claim expired (or whose sender is known dead) go back to the queue.

    At-least-once: such a row may have been delivered just before its sender died.
    A row ``sending`` with no claim at all was left by a version before claims.
    """
    expired = or_(D.c.claim_expires_at.is_(None), D.c.claim_expires_at < now)
    if dead:
        expired = or_(expired, D.c.claimed_by.in_(list(dead)))
    result = session.execute(
        update(D)
        .where(D.c.issue_id == issue_id, D.c.status == DeliveryStatus.SENDING.value, expired)
        .values(status=DeliveryStatus.QUEUED.value, claimed_by=None, claim_expires_at=None)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def expired_claims(session: Session, issue_id: int, now: datetime) -> int:
    """Rows ``sending`` whose claim has expired (their sender stopped renewing)."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(D)
            .where(
                D.c.issue_id == issue_id,
                D.c.status == DeliveryStatus.SENDING.value,
                or_(D.c.claim_expires_at.is_(None), D.c.claim_expires_at < now),
            )
        )
        or 0
    )


def renew_claims(session: Session, issue_id: int, claimant: Claimant) -> int:
    """Push this sender's claims forward (it is alive and still working on them)."""
    result = session.execute(
        update(D)
        .where(
            D.c.issue_id == issue_id,
            D.c.status == DeliveryStatus.SENDING.value,
            D.c.claimed_by == claimant.sender,
        )
        .values(claim_expires_at=claimant.expires_at)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def claim_holders(
    session: Session, issue_id: int, now: datetime, *, besides: str | None = None
) -> dict[str, int]:
    """Senders holding live claims on the issue, with how many rows each."""
    query = (
        select(D.c.claimed_by, func.count())
        .where(
            D.c.issue_id == issue_id,
            D.c.status == DeliveryStatus.SENDING.value,
            D.c.claim_expires_at >= now,
        )
        .group_by(D.c.claimed_by)
    )
    if besides is not None:
        query = query.where(D.c.claimed_by != besides)
    return {str(sender): int(n) for sender, n in session.execute(query)}


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


def claim_next(
    session: Session, issue_id: int, after_id: int, limit: int, claimant: Claimant
) -> Claim:
    """Claim the next keyset batch of queued rows after ``after_id`` (ascending ids).

    This sender's own deferred rows wait for their retry time (it claims them again
    by id when due); anyone else's are fair game (a resume retries at once).
    """
    now = utcnow()
    rows = session.execute(
        _candidates(issue_id)
        .where(
            D.c.subscriber_id > after_id,
            or_(
                D.c.next_attempt_at.is_(None),
                D.c.next_attempt_at <= now,
                D.c.claimed_by.is_(None),
                D.c.claimed_by != claimant.sender,
            ),
        )
        .order_by(D.c.subscriber_id)
        .limit(limit)
    ).all()
    return _claim(session, issue_id, rows, claimant)


def claim_ids(session: Session, issue_id: int, ids: Sequence[int], claimant: Claimant) -> Claim:
    """Claim specific rows (this sender's due retries), if they are still queued."""
    rows = session.execute(
        _candidates(issue_id).where(D.c.subscriber_id.in_(list(ids))).order_by(D.c.subscriber_id)
    ).all()
    return _claim(session, issue_id, rows, claimant)


def _claim(session: Session, issue_id: int, rows: Sequence[Any], claimant: Claimant) -> Claim:
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
            .values(
                status=DeliveryStatus.SENDING.value,
                claimed_by=claimant.sender,
                claim_expires_at=claimant.expires_at,
            )
        )
    return Claim(jobs, len(gone), status, rows[-1][0] if rows else None)


def issue_status(session: Session, issue_id: int) -> IssueStatus | None:
    value = session.scalar(select(Issue.status).where(Issue.id == issue_id))
    return IssueStatus(value) if value is not None else None


# An outcome is written only while the row is still this sender's claim, except a
# delivery (250 to DATA), which is recorded whoever holds the row now: it happened.
_UPDATE = (
    update(D)
    .where(
        D.c.issue_id == bindparam("b_issue"),
        D.c.subscriber_id == bindparam("b_sid"),
        or_(
            D.c.claimed_by == bindparam("b_me"),
            bindparam("b_status", type_=String()) == DeliveryStatus.SENT.value,
        ),
    )
    .values(
        claim_expires_at=None,
        status=bindparam("b_status"),
        attempts=D.c.attempts + bindparam("b_inc"),
        next_attempt_at=bindparam("b_next"),
        last_code=bindparam("b_code"),
        last_response=bindparam("b_response"),
        message_id=bindparam("b_mid"),
        sent_at=bindparam("b_sent"),
    )
)
# One statement for a whole batch of outcomes on PostgreSQL: the batch arrives as
# arrays, one per field, and is joined to the table (fixed text: prepared once).
_PG_OUTCOMES = text(
    """
    UPDATE deliveries AS d SET
        claim_expires_at = NULL,
        status = v.status,
        attempts = d.attempts + v.inc,
        next_attempt_at = v.next_at,
        last_code = v.code,
        last_response = v.response,
        message_id = v.mid,
        sent_at = v.sent_at
    FROM unnest(
        CAST(:sids AS integer[]), CAST(:mes AS varchar[]), CAST(:statuses AS varchar[]),
        CAST(:incs AS integer[]), CAST(:nexts AS timestamp[]), CAST(:codes AS integer[]),
        CAST(:responses AS text[]), CAST(:mids AS varchar[]), CAST(:sents AS timestamp[])
    ) AS v(sid, me, status, inc, next_at, code, response, mid, sent_at)
    WHERE d.issue_id = :issue AND d.subscriber_id = v.sid
      AND (d.claimed_by = v.me OR v.status = 'sent')
    """
)


def _naive_utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC).replace(tzinfo=None) if value is not None else None


def _write_outcomes(session: Session, updates: list[dict[str, Any]]) -> None:
    """The outcomes as one statement on PostgreSQL (``UPDATE … FROM unnest(arrays)``).

    A hundred single-row UPDATEs cost PostgreSQL a hundred statements even when
    pipelined; one join against the batch is one.  SQLite runs the same prepared
    single-row UPDATE per outcome in-process, which is already cheap there.
    """
    statement, params = _outcome_statement(session.get_bind().dialect.name, updates)
    session.execute(statement, params)


def _outcome_statement(dialect: str, updates: list[dict[str, Any]]) -> tuple[Executable, Any]:
    """The statement writing a batch of outcomes on ``dialect``, with its parameters."""
    if dialect == "postgresql":
        return _PG_OUTCOMES, _pg_outcome_arrays(updates)
    return _UPDATE, updates


def _pg_outcome_arrays(updates: list[dict[str, Any]]) -> dict[str, Any]:
    """The parameters of ``_PG_OUTCOMES``: one array per field, naive UTC timestamps.

    A batch is always one issue's (``record`` builds it), so its first row names it.
    """
    return {
        "issue": updates[0]["b_issue"],
        "sids": [u["b_sid"] for u in updates],
        "mes": [u["b_me"] for u in updates],
        "statuses": [u["b_status"] for u in updates],
        "incs": [u["b_inc"] for u in updates],
        "nexts": [_naive_utc(u["b_next"]) for u in updates],
        "codes": [u["b_code"] for u in updates],
        "responses": [u["b_response"] for u in updates],
        "mids": [u["b_mid"] for u in updates],
        "sents": [_naive_utc(u["b_sent"]) for u in updates],
    }


_RELEASE = (
    update(D)
    .where(
        D.c.issue_id == bindparam("b_issue"),
        D.c.subscriber_id == bindparam("b_sid"),
        D.c.status == DeliveryStatus.SENDING.value,
        D.c.claimed_by == bindparam("b_me"),
    )
    .values(status=DeliveryStatus.QUEUED.value, claimed_by=None, claim_expires_at=None)
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
    session: Session,
    issue_id: int,
    results: Iterable[Result],
    give_up_after: int | None = None,
    *,
    sender: str | None = None,
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
            releases.append({"b_issue": issue_id, "b_sid": r.subscriber_id, "b_me": sender})
            continue
        o = r.outcome
        sent = o.outcome is Outcome.SENT
        updates.append(
            {
                "b_issue": issue_id,
                "b_sid": r.subscriber_id,
                "b_me": sender,
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
        _write_outcomes(session, updates)
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
