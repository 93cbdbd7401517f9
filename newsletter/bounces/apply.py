"""Applying findings: match each to its delivery, record it once, act on it.

Matching, most trustworthy first: the signed VERP tag (a forged or unknown one
means *unmatched*, and nobody is touched); the original's Message-ID as stored on
the delivery; the List-Unsubscribe token (signed, names the subscriber); and, only
where the finding itself is trusted (a signed provider webhook, or a mailbox when
no VERP address is configured), the recipient address.

What is done (DESIGN.md "Delivery semantics" 8): hard → subscriber and delivery
``bounced``; soft → counted, ``bounced`` after NEWSLETTER_SOFT_BOUNCE_LIMIT soft
bounces from different issues within :data:`SOFT_WINDOW`; policy → recorded on the
delivery, the subscriber untouched; complaint → subscriber ``complained``;
auto-replies and warnings → recorded only.

Domain functions: they take the session and never commit (the caller owns the
transaction, one per message, so a message is applied entirely or not at all).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from ..config import Settings
from ..models import (
    BounceEvent,
    BounceType,
    Delivery,
    DeliveryStatus,
    Subscriber,
    SubscriberStatus,
    utcnow,
)
from .parse import Finding
from .verp import InvalidTag, TagSigner

__all__ = ["SOFT_WINDOW", "Applied", "Matcher", "message_key", "record"]

SOFT_WINDOW = timedelta(days=30)
_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(?:\r?\n[ \t]+)?(<[^>\r\n]{1,240}>)", re.I | re.M)


@dataclass(frozen=True, slots=True)
class Applied:
    """What became of one finding (the ``bounces scan --json`` line, plus the action)."""

    finding: Finding
    issue_id: int | None
    subscriber_id: int | None
    action: str
    duplicate: bool = False


def message_key(raw: bytes) -> str:
    """The returned message's own Message-ID, else a hash of its bytes."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    match = _MESSAGE_ID.search(head)
    if match:
        return match.group(1).decode("ascii", "replace")
    return "sha256:" + hashlib.sha256(raw).hexdigest()


class UnsubscribeTokens(Protocol):
    """What matching needs of the app's token signer (raises ValueError when forged)."""

    def read_unsubscribe(self, token: str) -> int: ...


@dataclass
class _Match:
    delivery: Delivery | None
    subscriber: Subscriber | None
    how: str


class Matcher:
    """Finds the delivery a finding belongs to (read-only; usable in a dry run)."""

    def __init__(self, signer: TagSigner, tokens: UnsubscribeTokens) -> None:
        self._signer = signer
        self._tokens = tokens

    def match(self, session: Session, finding: Finding, trust_address: bool) -> _Match:
        if finding.tag:
            try:
                issue_id, subscriber_id = self._signer.read(finding.tag)
            except InvalidTag:
                return _Match(None, None, "unmatched: forged tag")
            delivery = session.get(Delivery, (issue_id, subscriber_id))
            if delivery is None:
                return _Match(None, None, "unmatched: unknown tag")
            return _Match(delivery, session.get(Subscriber, subscriber_id), "tag")
        if finding.message_id:
            delivery = session.scalars(
                select(Delivery).where(Delivery.message_id == finding.message_id).limit(1)
            ).first()
            if delivery is not None:
                return _Match(
                    delivery, session.get(Subscriber, delivery.subscriber_id), "message-id"
                )
        subscriber = None
        how = "unmatched"
        if finding.unsubscribe_token:
            try:
                subscriber = session.get(
                    Subscriber, self._tokens.read_unsubscribe(finding.unsubscribe_token)
                )
                how = "unsubscribe token"
            except ValueError:  # tokens.InvalidToken
                return _Match(None, None, "unmatched: forged unsubscribe token")
        if subscriber is None and trust_address:
            for address in (finding.recipient, finding.original_recipient):
                if address:
                    subscriber = session.scalars(
                        select(Subscriber).where(Subscriber.email == address.lower())
                    ).first()
                    if subscriber is not None:
                        how = "address"
                        break
        if subscriber is None:
            return _Match(None, None, how)
        return _Match(_latest_delivery(session, subscriber.id), subscriber, how)


def _latest_delivery(session: Session, subscriber_id: int) -> Delivery | None:
    return session.scalars(
        select(Delivery)
        .where(Delivery.subscriber_id == subscriber_id, Delivery.sent_at.is_not(None))
        .order_by(Delivery.sent_at.desc())
        .limit(1)
    ).first()


def _keys(key: str, count: int) -> list[str]:
    return [key if n == 0 else f"{key[:240]}#{n}" for n in range(max(1, count))]


def record(
    session: Session,
    *,
    source: str,
    key: str,
    findings: list[Finding],
    matcher: Matcher,
    settings: Settings,
    trust_address: bool,
    dry_run: bool = False,
    now: datetime | None = None,
) -> list[Applied]:
    """Record and apply one message's findings, unless that message was seen before."""
    now = now or utcnow()
    keys = _keys(key[:255], len(findings))
    seen = session.scalars(select(BounceEvent).where(BounceEvent.message_key.in_(keys))).all()
    if seen:
        return [
            Applied(f, e.issue_id, e.subscriber_id, e.action, duplicate=True)
            for f, e in zip(findings, sorted(seen, key=lambda e: e.id), strict=False)
        ]
    out: list[Applied] = []
    handled: set[int] = set()
    for finding, event_key in zip(findings, keys, strict=False):
        match = matcher.match(session, finding, trust_address)
        issue_id = match.delivery.issue_id if match.delivery else None
        subscriber_id = match.subscriber.id if match.subscriber else None
        if match.subscriber is None:
            action = match.how
        elif subscriber_id in handled:
            action = "same delivery as above"
        elif dry_run:
            action = f"would apply ({match.how})"
        else:
            action = _apply(session, finding, match, settings, now)
            handled.add(match.subscriber.id)
        if not dry_run:
            session.add(
                BounceEvent(
                    source=source[:1024],
                    message_key=event_key,
                    recipient=(finding.recipient or "")[:320] or None,
                    type=BounceType(finding.type),
                    status=(finding.status or "")[:32] or None,
                    text=finding.text,
                    issue_id=issue_id,
                    subscriber_id=subscriber_id,
                    action=action[:200],
                    received_at=now,
                )
            )
            session.flush()
        out.append(Applied(finding, issue_id, subscriber_id, action))
    return out


def _apply(
    session: Session, finding: Finding, match: _Match, settings: Settings, now: datetime
) -> str:
    subscriber = match.subscriber
    assert subscriber is not None
    kind = BounceType(finding.type)
    if kind in (BounceType.AUTOREPLY, BounceType.NONE):
        return "ignored" if kind is BounceType.AUTOREPLY else "nothing to do (warning or no bounce)"
    _mark_delivery(match.delivery, finding, kind, now)
    if kind is BounceType.POLICY:
        return f"policy: recorded on issue ({match.how}); subscriber untouched"
    if kind is BounceType.COMPLAINT:
        subscriber.status = SubscriberStatus.COMPLAINED
        subscriber.complained_at = subscriber.complained_at or now
        subscriber.confirm_sent_at = None
        _skip_queued(session, subscriber.id)
        return f"subscriber complained ({match.how})"
    subscriber.bounce_count = (subscriber.bounce_count or 0) + 1
    if kind is BounceType.HARD:
        return _suppress(session, subscriber, f"hard bounce ({match.how})")
    count = _soft_issues(session, subscriber.id, match.delivery, now)
    if count >= settings.soft_bounce_limit:
        return _suppress(session, subscriber, f"soft bounce {count}/{settings.soft_bounce_limit}")
    return f"soft bounce {count}/{settings.soft_bounce_limit} counted ({match.how})"


def _mark_delivery(
    delivery: Delivery | None, finding: Finding, kind: BounceType, now: datetime
) -> None:
    if delivery is None:
        return
    stronger = delivery.bounce_type in (BounceType.HARD, BounceType.COMPLAINT)
    if stronger and kind not in (BounceType.HARD, BounceType.COMPLAINT):
        return  # a later soft/policy note does not hide the hard bounce or complaint
    delivery.bounce_type = kind
    delivery.bounce_status = (finding.status or "")[:32] or None
    delivery.bounce_text = finding.text
    delivery.bounced_at = now
    if kind is BounceType.HARD:
        delivery.status = DeliveryStatus.BOUNCED  # even though the relay said 250


def _suppress(session: Session, subscriber: Subscriber, why: str) -> str:
    if subscriber.status in (SubscriberStatus.ACTIVE, SubscriberStatus.PENDING):
        subscriber.status = SubscriberStatus.BOUNCED
        subscriber.confirm_sent_at = None
        _skip_queued(session, subscriber.id)
        return f"subscriber bounced: {why}"
    return f"{why}; subscriber already {subscriber.status.value}"


def _soft_issues(
    session: Session, subscriber_id: int, delivery: Delivery | None, now: datetime
) -> int:
    """Different issues with a soft bounce for this subscriber in the window, this one included."""
    rows = session.scalars(
        select(func.coalesce(BounceEvent.issue_id, -BounceEvent.id)).where(
            BounceEvent.subscriber_id == subscriber_id,
            BounceEvent.type == BounceType.SOFT,
            BounceEvent.received_at >= now - SOFT_WINDOW,
        )
    ).all()
    issues = set(rows)
    issues.add(delivery.issue_id if delivery is not None else 0)
    return len(issues)


def _skip_queued(session: Session, subscriber_id: int) -> None:
    """Queued rows of an issue still sending are skipped: nothing more goes out."""
    session.execute(
        update(Delivery)
        .where(Delivery.subscriber_id == subscriber_id, Delivery.status == DeliveryStatus.QUEUED)
        .values(status=DeliveryStatus.SKIPPED)
        .execution_options(synchronize_session=False)
    )
