"""Subscribers: who is on the list, how they get on it, and how they stay off it.

The life cycle is ``pending --confirm--> active --unsubscribe/bounce--> unsubscribed |
bounced``.  Two rules shape every function here:

* **An address is one person.**  Addresses are validated with email-validator (no
  DNS: the sender may have no network to the outside world, and a typo check is all
  validation can honestly promise) and stored in one canonical form, so
  ``Alice@Example.com`` and ``alice@example.com`` are the same row.  See
  :func:`normalise_email` for the exact form and why.
* **Suppression is sticky.**  An unsubscribed or bounced row is kept, so the address
  stays off the list: the CLI and CSV imports never reactivate it.  The only way
  back for someone who unsubscribed is their own fresh request *and* confirmation
  through the web form (:func:`request_subscription` then :func:`confirm`); a
  bounced or complained address never comes back through the form.  Only ``remove --erase``
  deletes the row (right to erasure), which by definition forgets the address too.

Domain functions take the session first and never commit: the CLI, web app and
scheduler own the transactions.  CSV import/export live in :mod:`newsletter.subscribers.csvio`
(the package surface offers :func:`import_csv` / :func:`export_csv`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from ..models import BounceEvent, Delivery, DeliveryStatus, Subscriber, SubscriberStatus, utcnow

# Address and name rules live in .addresses; re-exported, callers use them from here.
from .addresses import NAME_MAX as NAME_MAX
from .addresses import InvalidEmail as InvalidEmail
from .addresses import clean_name as clean_name
from .addresses import normalise_email as normalise_email

IP_MAX = 64
SUPPRESSED = frozenset(
    {SubscriberStatus.UNSUBSCRIBED, SubscriberStatus.BOUNCED, SubscriberStatus.COMPLAINED}
)


class Suppressed(ValueError):
    """The address unsubscribed or bounced: only the person can bring it back."""

    def __init__(self, subscriber: Subscriber) -> None:
        self.email = subscriber.email
        self.status = subscriber.status
        super().__init__(f"{subscriber.email} {suppression_reason(subscriber)}")


class UnknownSubscriber(LookupError):
    """No subscriber has this address."""


def suppression_reason(subscriber: Subscriber) -> str:
    """Why a suppressed row is left alone, for CLI and import reports."""
    if subscriber.status is SubscriberStatus.BOUNCED:
        return (
            f"bounced ({subscriber.bounce_count} bounce(s)): never re-added by the CLI or an import"
        )
    if subscriber.status is SubscriberStatus.COMPLAINED:
        return "reported our mail as spam: never mailed again, never re-added"
    when = subscriber.unsubscribed_at
    since = f" on {when:%Y-%m-%d}" if when is not None else ""
    return f"unsubscribed{since}: never re-added by the CLI or an import"


def find(session: Session, email: str) -> Subscriber | None:
    """The subscriber with this address in any spelling (raises InvalidEmail)."""
    return _by_address(session, normalise_email(email))


def _by_address(session: Session, address: str) -> Subscriber | None:
    return session.scalar(select(Subscriber).where(Subscriber.email == address))


def add_subscriber(
    session: Session,
    email: str,
    name: str = "",
    confirmed: bool = False,
    source: str = "cli",
    now: datetime | None = None,
) -> Subscriber:
    """Add an address (``confirmed`` makes it active), or update the existing row.

    An existing pending row becomes active when ``confirmed``; an active row is
    never downgraded; a non-empty ``name`` replaces the stored one.  Raises
    :class:`Suppressed` for an unsubscribed or bounced address: an operator
    re-adding someone who left is exactly what the suppression rule forbids.
    """
    address = normalise_email(email)
    name = clean_name(name)
    now = now or utcnow()
    subscriber = _by_address(session, address)
    if subscriber is None:
        subscriber = Subscriber(
            email=address,
            name=name,
            status=SubscriberStatus.ACTIVE if confirmed else SubscriberStatus.PENDING,
            created_at=now,
            confirmed_at=now if confirmed else None,
            bounce_count=0,
            source=source,
        )
        session.add(subscriber)
        session.flush()
        return subscriber
    if subscriber.status in SUPPRESSED:
        raise Suppressed(subscriber)
    if name and name != subscriber.name:
        subscriber.name = name
    if confirmed and subscriber.status is SubscriberStatus.PENDING:
        subscriber.status = SubscriberStatus.ACTIVE
        subscriber.confirmed_at = now
    session.flush()
    return subscriber


def request_subscription(
    session: Session, email: str, name: str = "", now: datetime | None = None
) -> Subscriber | None:
    """:func:`signup_request`'s subscriber when it needs a confirmation email, else None."""
    subscriber, needs_confirmation = signup_request(session, email, name, now)
    return subscriber if needs_confirmation else None


def signup_request(
    session: Session, email: str, name: str = "", now: datetime | None = None
) -> tuple[Subscriber, bool]:
    """A web signup: the subscriber who should get a confirmation email now, or None.

    * new address: a pending row (source ``web``) is created;
    * pending: the same row, so a lost or expired confirmation can be re-sent;
    * unsubscribed: the row is returned *unchanged in status*, so the person can
      come back, but only by confirming (the address stays suppressed until then,
      and an unconfirmed request never turns it into a purgeable pending row);
    * active: the row, with False: it gets an "already subscribed" email instead;
    * complained or bounced: the row, untouched, with False, and :func:`may_mail`
      is False for it: the form never re-activates an address that reported us as
      spam or bounced, and sends it nothing (the page answers the same either way).

    Returns (subscriber, needs a confirmation).  Every case writes the row the
    same way (``confirm_sent_at``, one flush), so that the time a request takes
    does not tell a prober whether the address is an active reader.

    ``confirm_sent_at`` is set to ``now``: it marks the open request that
    :func:`confirm` requires before it reactivates a suppressed row, and it
    restarts the pending row's expiry.  A non-empty ``name`` replaces the stored
    one on rows that are not active (an active subscriber's name cannot be changed
    by whoever types their address into the form).
    """
    address = normalise_email(email)
    name = clean_name(name)
    now = now or utcnow()
    subscriber = _by_address(session, address)
    if subscriber is None:
        subscriber = Subscriber(
            email=address,
            name=name,
            status=SubscriberStatus.PENDING,
            created_at=now,
            confirm_sent_at=now,
            bounce_count=0,
            source="web",
        )
        session.add(subscriber)
        session.flush()
        return subscriber, True
    if subscriber.status in (SubscriberStatus.COMPLAINED, SubscriberStatus.BOUNCED):
        return subscriber, False  # untouched: no open request may ever revive it
    if subscriber.status is SubscriberStatus.ACTIVE:
        subscriber.confirm_sent_at = now  # the same write as every other case
        session.flush()
        return subscriber, False
    if subscriber.status is not SubscriberStatus.PENDING:
        subscriber.epoch = (subscriber.epoch or 0) + 1  # a new signup: older links are void
    if name:
        subscriber.name = name
    subscriber.confirm_sent_at = now
    session.flush()
    return subscriber, True


def confirm(
    session: Session, subscriber_id: int, ip: str | None, now: datetime | None = None
) -> Subscriber | None:
    """Record consent and make the subscriber active; None when the id is unknown.

    Idempotent: confirming an active subscriber changes nothing (the first consent
    record is the one kept).  A pending row becomes active with ``confirmed_at``,
    ``consent_at`` and ``consent_ip``.  An unsubscribed row comes back only if the
    person asked again after leaving (:func:`request_subscription` set
    ``confirm_sent_at``, which unsubscribing clears), with a new consent record;
    otherwise an old confirmation link from before they left is ignored.  A
    bounced or complained row never comes back this way.  Callers check
    ``.status``: only ``active`` means confirmed.
    """
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        return None
    if subscriber.status is SubscriberStatus.ACTIVE:
        return subscriber
    if subscriber.status not in (SubscriberStatus.PENDING, SubscriberStatus.UNSUBSCRIBED):
        return subscriber  # bounced or complained: only an operator's decision changes that
    if subscriber.status in SUPPRESSED and subscriber.confirm_sent_at is None:
        return subscriber
    now = now or utcnow()
    subscriber.status = SubscriberStatus.ACTIVE
    subscriber.confirmed_at = now
    subscriber.consent_at = now
    subscriber.consent_ip = _clean_ip(ip)
    subscriber.unsubscribed_at = None
    subscriber.paused_until = None
    session.flush()
    return subscriber


def may_mail(subscriber: Subscriber) -> bool:
    """False for someone who complained or bounced: the form mails them nothing."""
    return subscriber.status not in (SubscriberStatus.COMPLAINED, SubscriberStatus.BOUNCED)


def current_epoch(subscriber: Subscriber, epoch: int) -> bool:
    """A confirm token minted in ``epoch`` still applies to ``subscriber``.

    False once the person unsubscribed or signed up again since: that link "has
    been replaced" by the one in their newest email.
    """
    return epoch == (subscriber.epoch or 0)


def unsubscribe(
    session: Session, subscriber_id: int, now: datetime | None = None
) -> Subscriber | None:
    """Mark unsubscribed (kept as a suppression record); None when the id is unknown.

    Idempotent: a second call keeps the first ``unsubscribed_at``.  Any open
    confirmation is voided, and the person's deliveries still ``queued`` for an
    issue being sent become ``skipped``, so nothing more reaches them even from an
    issue enqueued before they left (rows already ``sending`` are in flight).
    """
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        return None
    if subscriber.status is not SubscriberStatus.UNSUBSCRIBED:
        subscriber.status = SubscriberStatus.UNSUBSCRIBED
        subscriber.unsubscribed_at = now or utcnow()
        subscriber.epoch = (subscriber.epoch or 0) + 1  # every confirm link so far is void
    subscriber.confirm_sent_at = None
    session.flush()
    _skip_queued(session, subscriber.id)
    return subscriber


def mark_bounced(session: Session, subscriber_id: int) -> Subscriber | None:
    """Record a hard bounce: status ``bounced``, ``bounce_count`` + 1.

    An unsubscribed row stays unsubscribed (the person's own choice is the more
    useful record) but still counts the bounce.  Open confirmations are voided.
    Deliveries are left to the delivery loop that called this.
    """
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        return None
    subscriber.bounce_count = (subscriber.bounce_count or 0) + 1
    if subscriber.status is not SubscriberStatus.UNSUBSCRIBED:
        subscriber.status = SubscriberStatus.BOUNCED
    subscriber.confirm_sent_at = None
    session.flush()
    return subscriber


def purge_expired_pending(
    session: Session, older_than: timedelta | datetime, now: datetime | None = None
) -> int:
    """Delete pending signups whose confirmation went unanswered; return how many.

    ``older_than`` is an age (``timedelta``, e.g. the token lifetime) or a cutoff
    time.  A row's age counts from its latest confirmation request, so asking for a
    new link keeps it.  Only rows that were sent a confirmation (web signups) are
    purged: a pending row the operator imported is their list, not an expired
    request.  Unsubscribed and bounced rows are never purged (suppression).
    """
    cutoff = (now or utcnow()) - older_than if isinstance(older_than, timedelta) else older_than
    age_from = func.coalesce(Subscriber.confirm_sent_at, Subscriber.created_at)
    result = session.execute(
        delete(Subscriber)
        .where(Subscriber.status == SubscriberStatus.PENDING)
        .where(or_(Subscriber.source == "web", Subscriber.confirm_sent_at.is_not(None)))
        .where(age_from < cutoff)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Removal:
    """What :func:`remove` did."""

    email: str
    previous: SubscriberStatus
    erased: bool
    deliveries_erased: int = 0


def remove(
    session: Session, email: str, erase: bool = False, now: datetime | None = None
) -> Removal:
    """Unsubscribe ``email`` keeping the row, or with ``erase`` delete all their data.

    Erasure deletes the subscriber row, every delivery row (which hold their
    Message-IDs and SMTP replies that may quote the address) and every recorded
    bounce or complaint that names them or the address.  Afterwards the
    address is no longer known, so it is no longer suppressed either: that is
    what erasure means.  Raises :class:`UnknownSubscriber` / :class:`InvalidEmail`.
    """
    subscriber = find(session, email)
    if subscriber is None:
        raise UnknownSubscriber(f"no subscriber with the address {normalise_email(email)}")
    previous = subscriber.status
    if not erase:
        unsubscribe(session, subscriber.id, now=now)
        return Removal(subscriber.email, previous, erased=False)
    deleted = session.execute(
        delete(Delivery)
        .where(Delivery.subscriber_id == subscriber.id)
        .execution_options(synchronize_session=False)
    )
    session.execute(  # bounce reports quote the address, matched to this row or not
        delete(BounceEvent)
        .where(
            (BounceEvent.subscriber_id == subscriber.id)
            | (BounceEvent.recipient == subscriber.email)
        )
        .execution_options(synchronize_session=False)
    )
    session.delete(subscriber)
    session.flush()
    return Removal(subscriber.email, previous, erased=True, deliveries_erased=int(deleted.rowcount))  # type: ignore[attr-defined]


def list_subscribers(
    session: Session, status: SubscriberStatus | None = None, limit: int | None = None
) -> Sequence[Subscriber]:
    """Subscribers in the order they joined, optionally of one status."""
    query = select(Subscriber).order_by(Subscriber.id)
    if status is not None:
        query = query.where(Subscriber.status == status)
    if limit:
        query = query.limit(limit)
    return session.scalars(query).all()


def count_by_status(session: Session) -> dict[SubscriberStatus, int]:
    """How many subscribers are in each status (every status present, maybe 0)."""
    counts = dict.fromkeys(SubscriberStatus, 0)
    rows = session.execute(
        select(Subscriber.status, func.count()).group_by(Subscriber.status)
    ).all()
    for status, count in rows:
        counts[SubscriberStatus(status)] = int(count)
    return counts


def _skip_queued(session: Session, subscriber_id: int) -> None:
    session.execute(
        update(Delivery)
        .where(Delivery.subscriber_id == subscriber_id)
        .where(Delivery.status == DeliveryStatus.QUEUED)
        .values(status=DeliveryStatus.SKIPPED)
        .execution_options(synchronize_session=False)
    )


def _clean_ip(ip: str | None) -> str | None:
    if not ip:
        return None
    cleaned = "".join(ch for ch in ip if ch.isprintable() and not ch.isspace())
    return cleaned[:IP_MAX] or None
