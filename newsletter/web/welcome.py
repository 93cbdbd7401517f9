"""The welcome email, queued when a confirmation turns a reader active.

Sent once: the confirm route queues it only when that very POST changed the
reader from pending (or unsubscribed, "welcome back") to active, so a replayed
or double-clicked confirmation sends nothing more.  Like the confirmation it goes
through the off-thread mailer (``confirmations.ConfirmationMailer``): what it needs
from the database (the latest issue's top stories, the reader's frequency) is read
in the confirming transaction and carried in the item, so the mailer thread never
opens a session.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..context import Context
from ..delivery import Transport
from ..models import Frequency, Issue, IssueStatus, IssueStory, Story, Subscriber
from .confirmations import deliver_single

log = logging.getLogger("newsletter.web.mail")

TOP_STORIES = 3


@dataclass(frozen=True)
class Welcome:
    """One welcome email: who, how often they chose, and the stories to show."""

    subscriber_id: int
    email: str
    name: str
    frequency: Frequency
    returning: bool
    stories: tuple[Story, ...]

    def send(self, ctx: Context, transport: Transport, retry_delays: tuple[float, ...]) -> bool:
        """Render, build and send (called on the mailer thread); True when accepted."""
        from jinja2 import TemplateNotFound

        from ..mail import build_single
        from ..mail.welcome import render_welcome

        base = ctx.settings.base_url
        try:
            rendered = render_welcome(
                ctx,
                name=self.name,
                frequency=self.frequency,
                preferences_url=f"{base}/preferences/{ctx.tokens.preferences(self.subscriber_id)}",
                stories=self.stories,
                returning=self.returning,
            )
        except TemplateNotFound as exc:  # an operator's templates folder without welcome.*
            log.warning("no welcome email sent: template %s is missing", exc.name)
            return False
        unsubscribe = f"{base}/unsubscribe/{ctx.tokens.unsubscribe(self.subscriber_id)}"
        built = build_single(
            ctx, self.email, self.name, rendered.subject, rendered.html, rendered.text, unsubscribe
        )
        return deliver_single(
            ctx, transport, self.email, built.data, retry_delays, f"welcome to {self.subscriber_id}"
        )


def latest_top_stories(session: Session, limit: int = TOP_STORIES) -> tuple[Story, ...]:
    """The first stories of the most recent issue that went out, in its order."""
    latest = session.scalar(
        select(Issue.id).where(Issue.status == IssueStatus.SENT).order_by(Issue.id.desc()).limit(1)
    )
    if latest is None:
        return ()
    rows = session.scalars(
        select(Story)
        .join(IssueStory, IssueStory.story_id == Story.id)
        .where(IssueStory.issue_id == latest)
        .order_by(IssueStory.position)
        .limit(limit)
    ).all()
    for story in rows:
        session.expunge(story)  # carried to the mailer thread after the transaction
    return tuple(rows)


def welcome_for(session: Session, subscriber: Subscriber, returning: bool) -> Welcome:
    """The welcome for a reader who has just become active."""
    return Welcome(
        subscriber_id=subscriber.id,
        email=subscriber.email,
        name=subscriber.name,
        frequency=Frequency(subscriber.frequency),
        returning=returning,
        stories=latest_top_stories(session),
    )
