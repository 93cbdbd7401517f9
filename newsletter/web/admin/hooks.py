"""Where the admin meets stages that may land after it (bounces, reader preferences).

Each function answers from what the schema has: before the bounce stage's
``bounce_events`` table and ``deliveries.bounce_type`` exist it returns "nothing
recorded" (``None`` or empty), after they land it reads them.  The presence of a
model or column is looked up once on :mod:`newsletter.models`, never guessed from
the database.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ... import models
from ...config import Settings
from ...models import AppState, Delivery, Issue, IssueStatus

POLICY_SPIKE = 0.01  # policy bounces above 1 % of an issue's deliveries (as `issues show`)


def _events() -> Any:
    """The ``BounceEvent`` model once the bounce stage has landed, else None."""
    return getattr(models, "BounceEvent", None)


def _bounce_type() -> Any:
    return getattr(Delivery, "bounce_type", None)


def _value(kind: Any) -> str:
    return str(getattr(kind, "value", kind))


def extra_warnings(session: Session, settings: Settings) -> list[str]:
    """Policy-bounce spikes on recent issues, and a bounce mailbox that could not be read."""
    out: list[str] = []
    column = _bounce_type()
    if column is not None:
        recent = list(
            session.scalars(
                select(Issue.id)
                .where(Issue.status.in_([IssueStatus.SENT, IssueStatus.SENDING]))
                .order_by(Issue.id.desc())
                .limit(5)
            )
        )
        for issue_id in recent:
            total = session.scalar(
                select(func.count()).select_from(Delivery).where(Delivery.issue_id == issue_id)
            )
            policy = session.scalar(
                select(func.count())
                .select_from(Delivery)
                .where(Delivery.issue_id == issue_id, column == "policy")
            )
            if total and policy and policy / total > POLICY_SPIKE:
                top = bounce_diagnostics(session, issue_id, kind="policy", limit=1)
                why = f" (commonest: {top[0][0]})" if top else ""
                out.append(
                    f"Issue #{issue_id}: {policy:,} of {total:,} deliveries came back as policy "
                    f"bounces, receivers refusing us rather than the readers{why}."
                )
    from ...timetable.jobs import MAILBOX_ERROR_KEY

    state = session.get(AppState, MAILBOX_ERROR_KEY)
    if settings_mailbox(settings) and state is not None:
        out.append(f"The bounce mailbox could not be read: {state.value}")
    return out


def settings_mailbox(settings: Settings) -> str | None:
    value = getattr(settings, "bounce_mailbox", None)
    return str(value) if value else None


def bounce_diagnostics(
    session: Session, issue_id: int, kind: str | None = None, limit: int = 8
) -> list[tuple[str, int]]:
    """The commonest bounce diagnostics of an issue, as (text, count)."""
    event = _events()
    if event is None:
        return []
    query = select(event.type, event.status, event.text, func.count()).where(
        event.issue_id == issue_id
    )
    if kind is not None:
        query = query.where(event.type == kind)
    rows = session.execute(
        query.group_by(event.type, event.status, event.text)
        .order_by(func.count().desc())
        .limit(limit)
    ).all()
    return [
        (f"{_value(t)}: {status or ''} {text or ''}".strip(), int(n)) for t, status, text, n in rows
    ]


def reader_events(session: Session, subscriber_id: int) -> list[dict[str, object]]:
    """A reader's bounces and complaints as they came back, newest first."""
    event = _events()
    if event is None:
        return []
    rows = session.scalars(
        select(event)
        .where(event.subscriber_id == subscriber_id)
        .order_by(event.received_at.desc())
        .limit(100)
    )
    return [
        {"at": r.received_at, "type": _value(r.type), "status": r.status, "text": r.text}
        for r in rows
    ]


def bounce_page(session: Session, before: int | None, limit: int) -> dict[str, Any] | None:
    """Recorded bounce events, newest first, and unmatched ones; None before the stage lands."""
    event = _events()
    if event is None:
        return None
    query = select(event).where(event.subscriber_id.is_not(None))
    if before is not None:
        query = query.where(event.id < before)
    matched = session.scalars(query.order_by(event.id.desc()).limit(limit)).all()
    unmatched = session.scalars(
        select(event).where(event.subscriber_id.is_(None)).order_by(event.id.desc()).limit(limit)
    ).all()

    def row(r: Any) -> dict[str, Any]:
        return {
            "id": r.id,
            "at": r.received_at,
            "recipient": r.recipient,
            "type": _value(r.type),
            "status": r.status,
            "text": r.text,
            "action": r.action,
            "issue_id": r.issue_id,
            "subscriber_id": r.subscriber_id,
            "source": r.source,
        }

    return {"rows": [row(r) for r in matched], "unmatched": [row(r) for r in unmatched]}


def dkim_records(settings: Settings) -> list[tuple[str, str]]:
    """(name, TXT value) for each configured DKIM key, as ``newsletter dkim record`` prints."""
    from ...mail import DkimKeyError, DkimSigner

    try:
        signer = DkimSigner.from_settings(settings)
    except DkimKeyError as exc:
        return [("(the DKIM key cannot be used)", str(exc))]
    if signer is None:
        return []
    return [(key.record_name, key.record_value) for key in signer.keys]


def footer_snippet(settings: Settings) -> str | None:
    """The signup form to paste into the site (the readers stage's ``embed_snippet``)."""
    from importlib import import_module

    try:
        embed = import_module("newsletter.web.embed")
    except ImportError:
        return None
    return str(embed.embed_snippet(settings))
