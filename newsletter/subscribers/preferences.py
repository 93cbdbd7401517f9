"""A reader's own choices: how often (daily | weekly), which sections, a pause.

Stored on the subscriber row: ``frequency``; ``sections`` as a sorted JSON list
(NULL = every section, the default, so a section that appears later is included);
``paused_until`` (no issue of any kind until then).  The same canonical JSON text
is what an issue's renderings are keyed by (``issue_variants.sections``), so
readers are matched to their rendering by plain string equality in SQL.

Who an issue goes to, by kind (:func:`audience`):

* the daily digest: active, not paused, frequency ``daily``;
* the weekly edition: active, not paused, frequency ``weekly``;
* a manual issue (``send --story``): every active reader who is not paused,
  whatever their frequency.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from ..models import Frequency, IssueKind, Story, Subscriber, SubscriberStatus, utcnow

PAUSE_WEEKS = (2, 4)
SECTION_MAX = 200  # stories.section's length


class NoSectionChosen(ValueError):
    """Every section was unticked: that is unsubscribing, which has its own button."""


def encode_sections(names: Iterable[str]) -> str:
    """The canonical stored form of a section set: sorted, unique, JSON."""
    return json.dumps(sorted(set(names)), ensure_ascii=False, separators=(",", ":"))


def decode_sections(value: str | None) -> frozenset[str] | None:
    """The stored form back as a set; None means every section."""
    if value is None:
        return None
    loaded = json.loads(value)
    if not isinstance(loaded, list):
        raise ValueError(f"stored sections are not a list: {value!r}")
    return frozenset(str(name) for name in loaded)


def available_sections(session: Session) -> list[str]:
    """The sections stories have (featured ones), for the preferences form."""
    rows = session.scalars(
        select(Story.section)
        .where(Story.section.is_not(None), func.trim(Story.section) != "")
        .where(Story.featured.is_(True))
        .distinct()
        .order_by(Story.section)
    )
    return [row for row in rows if row is not None]


@dataclass(frozen=True)
class Choice:
    """What the preferences form posted, already checked."""

    frequency: Frequency
    sections: frozenset[str] | None  # None: every section
    pause_weeks: int | None = None  # 2 or 4: pause from now
    resume: bool = False  # end a pause now


def is_paused(subscriber: Subscriber, now: datetime | None = None) -> bool:
    until = subscriber.paused_until
    return until is not None and until > (now or utcnow())


def apply_choice(
    session: Session,
    subscriber_id: int,
    choice: Choice,
    available: Iterable[str],
    now: datetime | None = None,
) -> Subscriber | None:
    """Save a reader's choice; None when the id is unknown.

    Sections are limited to ``available`` (what the form offered); ticking them
    all stores NULL ("every section", so later sections are included too); ticking
    none raises :class:`NoSectionChosen`.
    """
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        return None
    offered = set(available)
    if choice.sections is None:
        subscriber.sections = None
    else:
        chosen = {name for name in choice.sections if name in offered}
        if not chosen:
            raise NoSectionChosen("choose at least one section (or unsubscribe)")
        subscriber.sections = None if chosen >= offered else encode_sections(chosen)
    subscriber.frequency = choice.frequency
    now = now or utcnow()
    if choice.pause_weeks is not None:
        if choice.pause_weeks not in PAUSE_WEEKS:
            raise ValueError(f"a pause is {' or '.join(map(str, PAUSE_WEEKS))} weeks")
        subscriber.paused_until = now + timedelta(weeks=choice.pause_weeks)
    elif choice.resume:
        subscriber.paused_until = None
    session.flush()
    return subscriber


def audience(kind: IssueKind | str, now: datetime | None = None) -> ColumnElement[bool]:
    """The WHERE clause on ``subscribers`` for who gets an issue of ``kind``."""
    now = now or utcnow()
    s = Subscriber.__table__.c
    clauses: list[Any] = [
        s.status == SubscriberStatus.ACTIVE.value,
        or_(s.paused_until.is_(None), s.paused_until <= now),
    ]
    kind = IssueKind(kind)
    if kind is IssueKind.DIGEST:
        clauses.append(s.frequency == Frequency.DAILY.value)
    elif kind is IssueKind.WEEKLY:
        clauses.append(s.frequency == Frequency.WEEKLY.value)
    return and_(*clauses)


def audience_count(session: Session, kind: IssueKind | str, now: datetime | None = None) -> int:
    """How many readers an issue of ``kind`` would be queued for right now."""
    count = session.scalar(select(func.count()).select_from(Subscriber).where(audience(kind, now)))
    return int(count or 0)


def section_sets(session: Session, kind: IssueKind | str, now: datetime | None = None) -> list[str]:
    """The distinct stored section sets among an issue's audience (NULL = all left out)."""
    s = Subscriber.__table__.c
    rows = session.scalars(
        select(s.sections)
        .where(audience(kind, now), s.sections.is_not(None))
        .distinct()
        .order_by(s.sections)
    )
    return [row for row in rows if row is not None]
