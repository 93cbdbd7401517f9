"""Readers matched to their issue's rendering (section choices) at enqueue time.

``mail.variants`` records one ``issue_variants`` row per distinct section set; here
each queued delivery of a reader with that exact stored set gets the row's number,
and a row with no stories turns their deliveries into ``skipped`` with the reason,
so the ledger says why they got nothing that day.  Core statements only, one per
section set (a handful), whatever the size of the list.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table, select, update
from sqlalchemy.orm import Session

from ..models import Delivery, DeliveryStatus, IssueVariant, Subscriber
from ..subscribers.preferences import decode_sections

D = cast(Table, Delivery.__table__)
S = cast(Table, Subscriber.__table__)
V = cast(Table, IssueVariant.__table__)


def assign_variants(session: Session, issue_id: int) -> int:
    """Point queued deliveries at their rendering; returns how many were skipped."""
    skipped = 0
    rows = session.execute(
        select(V.c.number, V.c.sections, V.c.story_count).where(V.c.issue_id == issue_id)
    ).all()
    for number, sections, story_count in rows:
        values: dict[str, object] = {"variant": number}
        if story_count == 0:
            names = ", ".join(sorted(decode_sections(sections) or ()))
            values.update(
                status=DeliveryStatus.SKIPPED.value,
                last_response=f"skipped: nothing in the reader's sections ({names}) this time",
            )
        result = session.execute(
            update(D)
            .where(
                D.c.issue_id == issue_id,
                D.c.status == DeliveryStatus.QUEUED.value,
                D.c.subscriber_id.in_(select(S.c.id).where(S.c.sections == sections)),
            )
            .values(**values)
        )
        if story_count == 0:
            skipped += int(result.rowcount)  # type: ignore[attr-defined]
    return skipped


def load_variants(
    session: Session, issue_id: int
) -> tuple[dict[int, tuple[str, str, str]], dict[int, int]]:
    """(variant number -> (subject, html, text), subscriber id -> variant number)."""
    variants = {
        number: (subject, html, text)
        for number, subject, html, text in session.execute(
            select(V.c.number, V.c.subject, V.c.html, V.c.text).where(
                V.c.issue_id == issue_id, V.c.story_count > 0
            )
        )
    }
    if not variants:
        return {}, {}
    assignment = {
        sid: number
        for sid, number in session.execute(
            select(D.c.subscriber_id, D.c.variant).where(
                D.c.issue_id == issue_id,
                D.c.variant.is_not(None),
                D.c.status.in_([DeliveryStatus.QUEUED.value, DeliveryStatus.SENDING.value]),
            )
        )
    }
    return variants, assignment


def describe_variants(session: Session, issue_id: int) -> list[str]:
    """One line per recorded rendering (``issues show``): its sections, stories, readers."""
    from sqlalchemy import func

    readers: dict[int, int] = {
        int(number): int(count)
        for number, count in session.execute(
            select(D.c.variant, func.count())
            .where(D.c.issue_id == issue_id, D.c.variant.is_not(None))
            .group_by(D.c.variant)
        )
    }
    lines = []
    for number, sections, story_count in session.execute(
        select(V.c.number, V.c.sections, V.c.story_count)
        .where(V.c.issue_id == issue_id)
        .order_by(V.c.number)
    ):
        names = ", ".join(sorted(decode_sections(sections) or ()))
        what = f"{story_count} stories" if story_count else "nothing: skipped"
        lines.append(f"{names}: {what}, {readers.get(number, 0):,} readers")
    return lines
