"""The daily sending quota: NEWSLETTER_DAILY_LIMIT, and a relay's own quota refusal.

Both are counted from the database, never in memory, so they hold across issues and
across processes (a ``send``, the timetable and ``worker`` processes share one quota):

* used today = deliveries whose ``sent_at`` falls on today's local date (midnight in
  NEWSLETTER_TIMEZONE), every issue, plus the rows claimed (``sending``) right now:
  a claim reserves its share, so a claim is never larger than what is left and the
  quota is met exactly, never passed;
* a relay's "daily quota exceeded" refusal is remembered (``app_state``) with its time
  and holds for the rest of that local day.

:func:`allowance` is the one call the engine makes, inside its claiming transaction.
At zero the engine stops; the rest stay ``queued`` and the timetable's upkeep picks
them up after local midnight, when the count starts again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, or_, select, text
from sqlalchemy.orm import Session

from ..config import Settings
from ..models import AppState, Delivery, DeliveryStatus, utcnow

RELAY_REFUSAL_KEY = "relay_quota_refusal"  # value: "<UTC ISO time> <the relay's words>"


@dataclass(frozen=True)
class Allowance:
    """How many more messages may be claimed now; ``reason`` says why when it is 0."""

    count: int
    reason: str | None = None


def day_start(settings: Settings, now: datetime | None = None) -> datetime:
    """Today's local midnight (NEWSLETTER_TIMEZONE), as an aware datetime."""
    local = (now or utcnow()).astimezone(settings.tz)
    return local.replace(hour=0, minute=0, second=0, microsecond=0)


def used_today(session: Session, settings: Settings, now: datetime | None = None) -> int:
    """Messages sent since local midnight, across all issues, plus those claimed now."""
    since = day_start(settings, now)
    return int(
        session.scalar(
            select(func.count())
            .select_from(Delivery)
            .where(
                or_(
                    Delivery.sent_at >= since,
                    Delivery.status == DeliveryStatus.SENDING,
                )
            )
        )
        or 0
    )


def relay_refusal(session: Session, settings: Settings, now: datetime | None = None) -> str | None:
    """The relay's own quota refusal, if one came today (local date), else None."""
    value = session.scalar(select(AppState.value).where(AppState.key == RELAY_REFUSAL_KEY))
    if not value:
        return None
    stamp, _, words = value.partition(" ")
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if when < day_start(settings, now):
        return None
    return words


def note_relay_refusal(session: Session, words: str, now: datetime | None = None) -> None:
    """Remember that a relay said its daily quota is used up (holds until local midnight)."""
    value = f"{(now or utcnow()).isoformat()} {words[:500]}"
    row = session.get(AppState, RELAY_REFUSAL_KEY)
    if row is None:
        session.add(AppState(key=RELAY_REFUSAL_KEY, value=value))
    else:
        row.value = value
    session.flush()


def clear_relay_refusal(session: Session) -> None:
    """An operator resumes by hand (the relay's quota was raised, or the relay changed)."""
    row = session.get(AppState, RELAY_REFUSAL_KEY)
    if row is not None:
        session.delete(row)
        session.flush()


def allowance(
    session: Session, settings: Settings, wanted: int, now: datetime | None = None
) -> Allowance:
    """How many of ``wanted`` messages may be claimed now (call inside the claim's write).

    On PostgreSQL a transaction-level advisory lock makes concurrent claimers count
    one after the other (SQLite's BEGIN IMMEDIATE already does).
    """
    words = relay_refusal(session, settings, now)
    if words is not None:
        return Allowance(0, relay_reason(settings, words))
    limit = settings.daily_limit
    if limit <= 0:
        return Allowance(wanted)
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(72657301)"))  # "quota"
    left = max(0, limit - used_today(session, settings, now))
    if left == 0:
        return Allowance(0, f"daily limit of {limit:,} messages reached; {_rest(settings)}")
    return Allowance(min(wanted, left))


def relay_reason(settings: Settings, words: str) -> str:
    """Why the send stopped after a relay's own quota refusal (issue reason, CLI)."""
    return f"the relay's daily quota is used up ({words}); {_rest(settings)}"


def _rest(settings: Settings) -> str:
    return f"the rest stay queued until tomorrow (00:00 {settings.timezone})"
