"""``newsletter preview``: the next digest exactly as a reader gets it, nothing sent or kept.

The preview goes through the real path (selection, ``build_issue``, render,
``MessageFactory.build``) inside a transaction that is always rolled back, so the
file shows the very bytes a subscriber would receive (including the issue number
in the view-in-browser link) while the database is left as it was.  The preview
reader has subscriber id 0, which no token check accepts, so clicking its
unsubscribe link cannot unsubscribe anybody.
"""

from __future__ import annotations

import email
import email.policy
import webbrowser
from dataclasses import dataclass
from datetime import date, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from ..context import Context
    from ..mail import BuiltMessage
    from ..models import Issue


from .state import AppState, check_signing, pass_state

PREVIEW_SUBSCRIBER_ID = 0


@dataclass(frozen=True)
class Preview:
    subject: str
    story_count: int
    message: BuiltMessage
    note: str | None

    @property
    def html(self) -> str:
        return _part(self.message.data, "html")

    @property
    def text(self) -> str:
        return _part(self.message.data, "plain")


def _part(data: bytes, subtype: str) -> str:
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    body = parsed.get_body((subtype,))
    assert isinstance(body, EmailMessage)
    return str(body.get_content())


def build_preview(
    ctx: Context,
    *,
    name: str = "",
    today: date | None = None,
    to: str | None = None,
    editor_note: str | None = None,
    weekly: bool = False,
) -> Preview | None:
    """The next digest (or weekly edition) for a sample reader, or None when nothing is
    new. Writes nothing.

    The token signer is made first: without a configured key it stores a generated
    one in its own transaction, which must not wait on our open one.
    """

    from ..mail import (
        AlreadySentToday,
        MessageFactory,
        build_issue,
        local_today,
        next_issue_number,
    )

    ctx.tokens  # noqa: B018 - resolve (and maybe store) the secret key before locking
    session = ctx.db.session()
    try:
        day = today or local_today(ctx.settings)
        note = None
        if weekly:
            issue, note = _weekly_draft(session, ctx, day)
        else:
            try:
                issue = build_issue(session, ctx, today=day, note=editor_note, record=False)
            except AlreadySentToday as exc:
                note = f"{exc}; previewing the next digest instead"
                tomorrow = day + timedelta(days=1)
                issue = build_issue(session, ctx, today=tomorrow, note=editor_note, record=False)
        if issue is None:
            return None
        number = next_issue_number(session)
        factory = MessageFactory(ctx, number, issue.subject, issue.html, issue.text)
        recipient = to or f"preview@{factory_domain(ctx)}"
        built = factory.build(PREVIEW_SUBSCRIBER_ID, recipient, name)
        return Preview(issue.subject, len(issue.stories), built, note)
    finally:
        session.rollback()
        session.close()


def _weekly_draft(session: Session, ctx: Context, day: date) -> tuple[Issue | None, str | None]:
    """This week's edition (or, when it went out already, the same stories as next week's)."""
    from ..mail.weekly import AlreadySentThisWeek, build_weekly

    try:
        return build_weekly(session, ctx, today=day, record=False), None
    except AlreadySentThisWeek as exc:
        note = f"{exc}; previewing next week's instead"
        return build_weekly(session, ctx, today=day + timedelta(days=7), record=False), note


def factory_domain(ctx: Context) -> str:
    return ctx.settings.sender_domain


@click.command("preview")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Where to write it (default preview.html, or preview.eml with --eml).",
)
@click.option("--eml", is_flag=True, help="Write the whole message (headers and both parts).")
@click.option("--open", "open_browser", is_flag=True, help="Open the result in a browser.")
@click.option("--name", default="", help="Greet the sample reader by this name.")
@click.option(
    "--note",
    metavar="TEXT",
    help="An editor's note above the lead (default NEWSLETTER_DIGEST_NOTE).",
)
@click.option("--weekly", is_flag=True, help="This week's edition instead of the next digest.")
@pass_state
def preview(
    state: AppState,
    output: Path | None,
    eml: bool,
    open_browser: bool,
    name: str,
    note: str | None,
    weekly: bool,
) -> None:
    """Write the next digest as a subscriber would get it, without sending or recording it."""

    from jinja2 import TemplateError

    from ..mail import GMAIL_CLIP_BYTES, DkimKeyError, TemplateProblem

    ctx = state.ctx
    check_signing(ctx.settings)  # the preview is signed as a reader's copy would be
    try:
        result = build_preview(ctx, name=name, editor_note=note, weekly=weekly)
    except (TemplateProblem, TemplateError, DkimKeyError, ValueError) as exc:
        raise click.ClickException(f"cannot build the preview: {exc}") from None
    if result is None:
        if weekly:
            click.echo("nothing to send: no featured stories in the last 7 days")
            return
        click.echo("nothing new to send: no featured stories that have not gone out yet")
        return
    if result.note:
        click.echo(result.note, err=True)
    path = output or Path("preview.eml" if eml else "preview.html")
    try:
        if eml:
            path.write_bytes(result.message.data)
        else:
            path.write_text(result.html, encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror or exc}") from None
    html_size = len(result.html.encode("utf-8"))
    click.echo(
        f"Wrote {path} ({result.story_count} stories, HTML {html_size / 1024:.1f} KB)\n"
        f"Subject: {result.subject}"
    )
    if html_size > GMAIL_CLIP_BYTES:
        click.echo(
            f"warning: the HTML is over {GMAIL_CLIP_BYTES // 1024} KB; Gmail will clip it",
            err=True,
        )
    if open_browser:
        webbrowser.open(path.resolve().as_uri())


COMMANDS: list[click.Command] = [preview]
