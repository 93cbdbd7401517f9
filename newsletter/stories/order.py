"""The editor's order for the next digest: one pinned lead, then chosen positions.

A digest lists featured, unsent stories: the pinned story first, then stories an
editor gave a position (in that order), then the rest newest first.  Positions
are rewritten 1..n over the whole waiting list whenever an editor moves a story,
so the order seen in the admin is exactly the order the digest will use.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ..models import Story
from .store import editor_order_terms, list_stories, unsent_clause


def waiting(session: Session, limit: int | None = None) -> list[Story]:
    """The featured stories no digest has carried yet, in the next digest's order."""
    return list_stories(session, featured=True, unsent=True, limit=limit, editor_order=True)


def pin_lead(session: Session, story_id: int, pinned: bool = True) -> Story | None:
    """Make ``story_id`` the one lead (unpinning any other); None if there is no such story."""
    story = session.get(Story, story_id)
    if story is None:
        return None
    session.execute(update(Story).where(Story.pinned.is_(True)).values(pinned=False))
    story.pinned = pinned
    if pinned and not story.featured:
        story.featured = True  # a lead that is not featured would not go out at all
    session.flush()
    return story


def move(session: Session, story_id: int, offset: int) -> bool:
    """Move a waiting story ``offset`` places (negative: earlier); False if it is not waiting."""
    stories = waiting(session)
    ids = [s.id for s in stories]
    if story_id not in ids:
        return False
    here = ids.index(story_id)
    there = min(max(here + offset, 0), len(ids) - 1)
    ids.insert(there, ids.pop(here))
    set_order(session, ids)
    return True


def set_order(session: Session, story_ids: list[int]) -> None:
    """Give these stories positions 1..n in this order."""
    found = {s.id: s for s in session.scalars(select(Story).where(Story.id.in_(story_ids)))}
    for position, story_id in enumerate(story_ids, 1):
        if story_id in found:
            found[story_id].position = position
    session.flush()


__all__ = ["editor_order_terms", "move", "pin_lead", "set_order", "unsent_clause", "waiting"]
