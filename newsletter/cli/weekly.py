"""``newsletter send --weekly``: this week's edition, to the readers who chose weekly.

The same steps as the daily ``send``: an unfinished issue is resumed first; the
edition is shown from a rolled-back build; on yes it is frozen and queued in one
transaction and sent.  One edition per ISO week (``AlreadySentThisWeek``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click
from sqlalchemy.orm import Session

from .. import delivery
from ..context import Context
from ..models import IssueKind
from .sendview import console, run_issue


@contextmanager
def _rolled_back(ctx: Context) -> Iterator[Session]:
    """A write transaction that is always rolled back (the draft shown before yes)."""
    session = ctx.db.session()
    try:
        session.begin()
        yield session
    finally:
        session.rollback()
        session.close()


def weekly_readers(ctx: Context) -> int:
    """How many readers the weekly edition would go to right now."""
    from ..subscribers.preferences import audience_count

    with ctx.db.read() as session:
        return audience_count(session, IssueKind.WEEKLY)


def send_weekly(
    ctx: Context, *, yes: bool, dry_run: bool, resume_instead: Callable[[int], None], via: str
) -> None:
    """The body of ``send --weekly`` (``resume_instead`` is the daily send's resume)."""
    from ..mail.weekly import AlreadySentThisWeek, build_weekly

    with ctx.db.read() as session:
        unfinished = delivery.unfinished_issue(session)
        unfinished_id = unfinished.id if unfinished is not None else None
    if unfinished_id is not None:
        resume_instead(unfinished_id)
        return
    with _rolled_back(ctx) as session:
        try:
            draft = build_weekly(session, ctx, record=False)
        except AlreadySentThisWeek as exc:
            console.print(f"This week's edition was already sent: {exc}. Nothing to do.")
            return
        if draft is None:
            console.print("Nothing to send: no featured stories in the last 7 days.")
            return
        subject = draft.subject
        titles = [(link.story.id, link.story.title) for link in draft.stories]
    readers = weekly_readers(ctx)
    console.print(f"[bold]Subject:[/bold] {subject}", markup=True)
    console.print(f"[bold]Stories ({len(titles)}):[/bold]")
    for position, (story_id, title) in enumerate(titles, 1):
        console.print(f"  {position}. {title}  [dim](#{story_id})[/dim]")
    console.print(f"[bold]Recipients:[/bold] {readers:,} weekly readers")
    console.print(f"[bold]Via:[/bold] {via}")
    if dry_run:
        console.print("[yellow]Dry run:[/yellow] nothing was sent or recorded.")
        return
    if readers == 0:
        console.print("No weekly readers: nothing to send (no issue was recorded).")
        return
    if not yes:
        click.confirm(f"Send this week's edition to {readers:,} weekly readers?", abort=True)
    with ctx.db.write() as session:
        try:
            issue = build_weekly(session, ctx)
        except AlreadySentThisWeek as exc:
            console.print(f"This week's edition was already sent: {exc}.")
            return
        if issue is None:
            console.print("Nothing to send.")
            return
        issue_id = issue.id
        count = delivery.enqueue(session, issue.id)
        console.print(f"Issue #{issue_id} (weekly) frozen and queued for {count:,} readers.")
    run_issue(ctx, issue_id, "Sending", delivery.send_issue, finished_ok=True)
