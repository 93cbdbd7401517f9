"""Choose the stories of an issue and freeze the issue (DESIGN.md "Delivery semantics" 1).

A digest is the featured stories that no earlier (non-cancelled) digest carried,
newest first, at most ``NEWSLETTER_MAX_STORIES``; nothing new means no issue at all.
One digest per calendar day in ``NEWSLETTER_TIMEZONE``: the unique
``issues.digest_date`` column is the guard, so two schedulers racing on the same
morning cannot both create one (the loser gets :class:`AlreadySentToday`).
A manual issue is built from stories an editor picked and is exempt from both
rules.  Subject, HTML and text are rendered here once and stored on the row, so
retries, resumes and the archive all use exactly the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..config import Settings
from ..context import Context
from ..models import AppState, Issue, IssueKind, IssueStatus, IssueStory, Story, utcnow
from ..stories import list_stories
from .headers import header_safe
from .render import Rendered, render_issue
from .variants import record_variants


class AlreadySentToday(Exception):
    """Today's digest exists already; ``issue_id``/``digest_date`` say which one."""

    def __init__(self, digest_date: date, issue_id: int | None, status: str | None) -> None:
        self.digest_date = digest_date
        self.issue_id = issue_id
        self.status = status
        detail = f" (issue #{issue_id}, {status})" if issue_id is not None else ""
        super().__init__(f"a digest for {digest_date.isoformat()} already exists{detail}")


class UnknownStories(LookupError):
    """A manual issue named story ids that do not exist."""

    def __init__(self, missing: Sequence[int]) -> None:
        self.missing = list(missing)
        super().__init__("no such stories: " + ", ".join(str(i) for i in self.missing))


def local_today(settings: Settings, now: datetime | None = None) -> date:
    """Today's date where the newsroom is (NEWSLETTER_TIMEZONE), not where the server is."""
    return (now or utcnow()).astimezone(settings.tz).date()


def select_stories(session: Session, settings: Settings) -> list[Story]:
    """Featured, never in a non-cancelled digest, at most max_stories, in the editor's
    order: the pinned lead, then the positions set in the admin, then newest first."""
    return list_stories(
        session, featured=True, unsent=True, limit=settings.max_stories, editor_order=True
    )


NOTE_KEY = "next_digest_note"  # app_state row: the note an editor wrote in the admin


def stored_note(session: Session) -> str:
    """The editor's note saved for the next digest (admin), or ""."""
    row = session.get(AppState, NOTE_KEY)
    return row.value if row is not None else ""


def store_note(session: Session, note: str) -> None:
    """Save (or with "" remove) the note the next digest carries, whoever builds it."""
    row = session.get(AppState, NOTE_KEY)
    if not note:
        if row is not None:
            session.delete(row)
    elif row is None:
        session.add(AppState(key=NOTE_KEY, value=note))
    else:
        row.value = note
    session.flush()


def take_stored_note(session: Session) -> str:
    """The saved note, removed: it belongs to the one digest being built (a rolled-back
    draft puts it back)."""
    note = stored_note(session)
    if note:
        store_note(session, "")
    return note


def digest_for(session: Session, day: date) -> Issue | None:
    """The digest issue recorded for ``day``, whatever its status."""
    return session.scalar(select(Issue).where(Issue.digest_date == day))


def next_issue_number(session: Session) -> int:
    """The number the next issue will most likely get (shown in previews' links)."""
    return int(session.scalar(select(func.max(Issue.id))) or 0) + 1


def _manual_stories(session: Session, story_ids: Sequence[int]) -> list[Story]:
    ids = list(dict.fromkeys(story_ids))  # keep the editor's order, drop repeats
    if not ids:
        raise ValueError("a manual issue needs at least one story id")
    found = {s.id: s for s in session.scalars(select(Story).where(Story.id.in_(ids)))}
    missing = [i for i in ids if i not in found]
    if missing:
        raise UnknownStories(missing)
    return [found[i] for i in ids]


def frozen_issue(
    kind: IssueKind,
    rendered: Rendered,
    stories: Sequence[Story],
    subject: str | None = None,
    **guard: Any,
) -> Issue:
    """An unsaved issue holding the rendered bytes and its stories in order.

    ``guard`` is the column that keeps one edition per period (``digest_date`` for
    a daily, ``edition_week`` for a weekly); the caller adds and flushes it.
    """
    issue = Issue(
        kind=kind,
        subject=subject or rendered.subject,
        status=IssueStatus.SENDING,
        html=rendered.html,
        text=rendered.text,
        preheader=rendered.preheader,
        **guard,
    )
    issue.stories = [IssueStory(story=story, position=i) for i, story in enumerate(stories)]
    return issue


def build_issue(
    session: Session,
    ctx: Context,
    *,
    story_ids: Sequence[int] | None = None,
    subject: str | None = None,
    today: date | None = None,
    note: str | None = None,
    record: bool = True,
) -> Issue | None:
    """Create the frozen issue (flushed, not committed), or None when nothing is new.

    ``record=False`` (previews, the draft shown before "send this?") returns the same
    issue unsaved, with no id: a rolled-back insert would still use up a number of
    PostgreSQL's sequence, and the next real issue would show a gap.

    ``story_ids=None`` builds today's digest; raises :class:`AlreadySentToday` when
    one exists.  With ``story_ids`` a manual issue of exactly those stories is
    built.  ``subject`` overrides the rendered one (refused if it could break a
    header: ``ValueError``).  ``note`` is the editor's note above the lead
    (default: ``NEWSLETTER_DIGEST_NOTE`` for a digest, none for a manual issue).
    """
    settings = ctx.settings
    if subject is not None:
        subject = header_safe(subject.strip())
        if not subject:
            raise ValueError("the subject is empty")
        if len(subject) > 250:
            raise ValueError("the subject is longer than 250 characters")
    day = today or local_today(settings)
    if story_ids is None:
        existing = digest_for(session, day)
        if existing is not None:
            raise AlreadySentToday(day, existing.id, existing.status.value)
        stories = select_stories(session, settings)
        if not stories:
            return None
        kind, digest_date = IssueKind.DIGEST, day
        if note is None:
            note = take_stored_note(session) or settings.digest_note
    else:
        stories = _manual_stories(session, story_ids)
        kind, digest_date = IssueKind.MANUAL, None

    rendered = render_issue(ctx, stories, day, note)
    issue = frozen_issue(kind, rendered, stories, subject, digest_date=digest_date)
    if not record:
        return issue
    try:
        with session.begin_nested():
            session.add(issue)
            session.flush()
    except IntegrityError:
        if digest_date is None:
            raise
        other = digest_for(session, digest_date)
        raise AlreadySentToday(
            digest_date, other.id if other else None, other.status.value if other else None
        ) from None
    record_variants(
        session, issue, stories, lambda subset: render_issue(ctx, subset, day, note), subject
    )
    return issue
