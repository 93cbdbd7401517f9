"""``newsletter send`` and ``newsletter issues list|show|resume|cancel|retry-failed``.

``send`` never starts a second issue while one is unfinished: it resumes that one,
so an interrupted send is finished by simply running the same command again.
The issue is frozen and enqueued in one write transaction; the rendering shown
for confirmation is built but never inserted, so nothing is recorded (and no issue
number is used up) until the operator says yes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from ..context import Context
    from ..models import DeliveryStatus


from .issues_cli import issues_group
from .sendview import console, run_issue
from .state import AppState, check_signing, pass_state, require_real_settings


@dataclass
class Draft:
    """A rendered issue that was not recorded (rolled back)."""

    subject: str
    html: str
    text: str
    stories: list[tuple[int, str]]
    existing_id: int | None = None


def _parse_ids(values: tuple[str, ...]) -> list[int] | None:
    if not values:
        return None
    ids: list[int] = []
    for value in values:
        for part in value.replace(",", " ").split():
            if not part.isdigit():
                raise click.BadParameter(f"{part!r} is not a story id", param_hint="--story")
            ids.append(int(part))
    return ids


def _draft(
    ctx: Context, story_ids: list[int] | None, subject: str | None, note: str | None = None
) -> Draft | None:
    """Render what would go out; nothing is recorded (the issue is never inserted).

    Never inserted rather than rolled back: a rolled-back insert would still use up a
    number of PostgreSQL's sequence, and the real issue would show a gap.
    """

    from ..mail import UnknownStories, build_issue

    with ctx.db.read() as session:
        try:
            issue = build_issue(
                session, ctx, story_ids=story_ids, subject=subject, note=note, record=False
            )
        except UnknownStories as exc:
            raise click.ClickException(str(exc)) from None
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--subject") from None
        if issue is None:
            return None
        stories = [(link.story.id, link.story.title) for link in issue.stories]
        return Draft(issue.subject, issue.html, issue.text, stories)


def _existing(ctx: Context, issue_id: int) -> Draft:
    from ..models import Issue

    with ctx.db.read() as session:
        issue = session.get(Issue, issue_id)
        assert issue is not None
        stories = [(link.story.id, link.story.title) for link in issue.stories]
        return Draft(issue.subject, issue.html, issue.text, stories, existing_id=issue.id)


def _show_draft(draft: Draft, recipients: int, via: str) -> None:
    console.print(f"[bold]Subject:[/bold] {draft.subject}", markup=True)
    console.print(f"[bold]Stories ({len(draft.stories)}):[/bold]")
    for position, (story_id, title) in enumerate(draft.stories, 1):
        console.print(f"  {position}. {title}  [dim](#{story_id})[/dim]")
    console.print(f"[bold]Recipients:[/bold] {recipients:,} active subscribers")
    console.print(f"[bold]Via:[/bold] {via}")


def _send_test_copy(
    ctx: Context,
    to: str,
    story_ids: list[int] | None,
    subject: str | None,
    dry_run: bool,
    note: str | None = None,
) -> None:
    from .. import delivery
    from ..delivery import Outcome, open_transport
    from ..mail import AlreadySentToday, build_single
    from ..subscribers import InvalidEmail, normalise_email

    try:
        address = normalise_email(to)
    except InvalidEmail as exc:
        raise click.BadParameter(str(exc), param_hint="--to") from None
    draft: Draft | None
    with ctx.db.read() as session:
        unfinished = delivery.unfinished_issue(session) if story_ids is None else None
        unfinished_id = unfinished.id if unfinished is not None else None
    if unfinished_id is not None:
        draft = _existing(ctx, unfinished_id)
    else:
        try:
            draft = _draft(ctx, story_ids, subject, note)
        except AlreadySentToday as exc:
            if exc.issue_id is None:
                raise click.ClickException(str(exc)) from None
            draft = _existing(ctx, exc.issue_id)
    if draft is None:
        console.print("Nothing new to send: no featured stories that have not gone out yet.")
        return
    test_subject = f"[TEST] {draft.subject}"  # never mistaken for the real issue
    built = build_single(
        ctx, address, "", test_subject, draft.html, draft.text, issue_id=draft.existing_id
    )
    if dry_run:
        console.print(f"[yellow]Dry run:[/yellow] the test copy “{test_subject}” to {address}")
        console.print("was rendered but not sent; nothing was recorded.")
        return
    transport = open_transport(ctx.settings)
    try:
        outcome = transport.send(ctx.settings.from_email, address, built.data)
    finally:
        transport.close()
    if outcome.outcome is not Outcome.SENT:
        raise click.ClickException(f"the test copy to {address} was refused: {outcome.text}")
    console.print(f"Test copy “{test_subject}” sent to {address} via {transport.description}.")
    console.print("No subscriber was mailed and nothing was recorded.")


@click.command("send")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--dry-run", is_flag=True, help="Render and count, send and record nothing.")
@click.option("--to", "to", metavar="EMAIL", help="Send one test copy to EMAIL only (no ledger).")
@click.option(
    "--story",
    "stories",
    multiple=True,
    metavar="ID",
    help="A manual issue of these stories: --story 3 5 8, --story 3,5,8 or repeated.",
)
@click.option("--subject", help="Subject of a manual issue (default: the rendered one).")
@click.option(
    "--note",
    metavar="TEXT",
    help="An editor's note shown above the lead story (default NEWSLETTER_DIGEST_NOTE).",
)
@click.option(
    "--weekly", is_flag=True, help="This week's edition, to the readers who chose weekly."
)
@click.argument("more_ids", nargs=-1, metavar="")
@pass_state
def send_command(
    state: AppState,
    yes: bool,
    dry_run: bool,
    to: str | None,
    stories: tuple[str, ...],
    subject: str | None,
    note: str | None,
    weekly: bool,
    more_ids: tuple[str, ...],
) -> None:
    """Send today's digest now (or a manual issue with --story, or --weekly).

    An unfinished issue (interrupted, paused or with retries left) is resumed
    instead of starting another; one another process is sending is joined (this
    process becomes one more sender on it). Exit codes: 0 done or nothing new, 1
    failures or deliveries still queued, 3 paused by a policy refusal (5.7.x).
    """

    from .. import delivery
    from ..mail import AlreadySentToday
    from ..models import IssueStatus

    if more_ids and not stories:
        raise click.UsageError(
            f"unexpected arguments {' '.join(more_ids)} (story ids follow --story)"
        )
    story_ids = _parse_ids(stories + more_ids)
    ctx = state.ctx
    check_signing(ctx.settings)  # before any issue exists
    if subject is not None and story_ids is None:
        raise click.BadParameter("--subject goes with --story", param_hint="--subject")
    if weekly:
        _weekly(ctx, yes, dry_run, story_ids is not None or to is not None or note is not None)
        return
    if to is not None:
        _send_test_copy(ctx, to, story_ids, subject, dry_run, note)
        return
    if not dry_run:
        require_real_settings(ctx)
    from ..models import IssueKind
    from ..subscribers.preferences import audience_count

    with ctx.db.read() as session:
        unfinished = delivery.unfinished_issue(session)
        unfinished_id = unfinished.id if unfinished is not None else None
        # Daily readers for the digest (weekly and paused ones wait), everyone for --story.
        kind = IssueKind.DIGEST if story_ids is None else IssueKind.MANUAL
        recipients = audience_count(session, kind)
    via = open_transport_description(ctx)
    if unfinished_id is not None:
        _resume_instead(ctx, unfinished_id, yes=yes, dry_run=dry_run, new=story_ids is not None)
        return
    try:
        draft = _draft(ctx, story_ids, subject, note)
    except AlreadySentToday as exc:
        if exc.issue_id is not None and exc.status == IssueStatus.SENDING.value:
            _resume_instead(ctx, exc.issue_id, yes=yes, dry_run=dry_run, new=False)
            return  # another `send` started it since we looked: join it
        console.print(f"Today's digest was already sent: {exc}. Nothing to do.")
        return
    if draft is None:
        console.print("Nothing new to send: no featured stories that have not gone out yet.")
        return
    _show_draft(draft, recipients, via)
    _show_quota(ctx, recipients)
    if dry_run:
        console.print("[yellow]Dry run:[/yellow] nothing was sent or recorded.")
        return
    if recipients == 0:
        console.print("No active subscribers: nothing to send (no issue was recorded).")
        return
    if not yes:
        click.confirm(f"Send this to {recipients:,} subscribers?", abort=True)
    issue_id = _create(ctx, story_ids, subject, note)
    if issue_id is None:
        console.print("Nothing new to send.")
        return
    run_issue(ctx, issue_id, "Sending", delivery.send_issue, finished_ok=True)


def _weekly(ctx: Context, yes: bool, dry_run: bool, other_options: bool) -> None:
    """``send --weekly``: the body lives in :mod:`newsletter.cli.weekly`."""
    if other_options:
        raise click.UsageError("--weekly does not go with --story, --subject, --to or --note")
    if not dry_run:
        require_real_settings(ctx)
    from .weekly import send_weekly

    def resume(issue_id: int) -> None:
        _resume_instead(ctx, issue_id, yes=yes, dry_run=dry_run, new=True)

    via = open_transport_description(ctx)
    send_weekly(ctx, yes=yes, dry_run=dry_run, resume_instead=resume, via=via)


def _show_quota(ctx: Context, recipients: int) -> None:
    """With NEWSLETTER_DAILY_LIMIT: how many go today and how many wait for tomorrow."""
    from ..delivery import quota

    limit = ctx.settings.daily_limit
    if not limit:
        return
    with ctx.db.read() as session:
        allowed = quota.allowance(session, ctx.settings, recipients)
        used = quota.used_today(session, ctx.settings)
    console.print(f"[bold]Daily limit:[/bold] {used:,} of {limit:,} used today")
    if allowed.count < recipients:
        console.print(
            f"  {allowed.count:,} go today, {recipients - allowed.count:,} stay queued until "
            f"tomorrow (00:00 {ctx.settings.timezone})"
        )


def open_transport_description(ctx: Context) -> str:
    settings = ctx.settings
    if settings.smtp_urls:
        from ..delivery import SMTPTarget

        relays = ", then ".join(str(SMTPTarget.parse(url)) for url in settings.smtp_urls)
        return f"{relays} ({settings.smtp_connections} connections)"
    return f"Maildir outbox {settings.outbox}/ (no NEWSLETTER_SMTP_URL set)"


def _create(
    ctx: Context, story_ids: list[int] | None, subject: str | None, note: str | None = None
) -> int | None:
    """Freeze and enqueue in one transaction (or pick up an issue another process made)."""

    from .. import delivery
    from ..mail import AlreadySentToday, build_issue
    from ..models import IssueStatus

    with ctx.db.write() as session:
        other = delivery.unfinished_issue(session)
        if other is not None:
            console.print(f"Issue #{other.id} was started meanwhile: resuming it instead.")
            return other.id
        try:
            issue = build_issue(session, ctx, story_ids=story_ids, subject=subject, note=note)
        except AlreadySentToday as exc:
            if exc.issue_id is not None and exc.status == IssueStatus.SENDING.value:
                # Another `send` created it a moment ago (PostgreSQL: its insert won
                # the race): help send it rather than claim there is nothing to do.
                console.print(f"Issue #{exc.issue_id} was started meanwhile: joining it.")
                return exc.issue_id
            console.print(f"Today's digest was already sent: {exc}.")
            return None
        if issue is None:
            return None
        count = delivery.enqueue(session, issue.id)
        issue_id = issue.id
    # Only now, after the commit: a write that fails (a full disk) must not have
    # announced an issue that does not exist.
    console.print(f"Issue #{issue_id} frozen and queued for {count:,} subscribers.")
    return issue_id


def _resume_instead(ctx: Context, issue_id: int, *, yes: bool, dry_run: bool, new: bool) -> None:
    from .. import delivery
    from ..models import DeliveryStatus, Issue, IssueStatus

    with ctx.db.read() as session:
        issue = session.get(Issue, issue_id)
        assert issue is not None
        queued = _count(session, issue_id, DeliveryStatus.QUEUED, DeliveryStatus.SENDING)
        label, status, reason = issue.subject, issue.status, issue.status_reason
        senders = delivery.other_senders(session, issue_id)
    what = "a manual issue is not started" if new else "no new issue is started"
    if senders and status is IssueStatus.SENDING:
        names = ", ".join(f"pid {pid} on {host}" for host, pid, _rows in senders)
        console.print(
            f"Issue #{issue_id} “{label}” is being sent ({queued:,} still queued): joining it "
            f"as one more sender ({names}); {what}."
        )
    else:
        console.print(
            f"Issue #{issue_id} “{label}” is unfinished ({status.value}, {queued:,} still "
            f"queued): resuming it; {what}."
        )
    if status is IssueStatus.PAUSED:
        console.print(f"[yellow]It was paused because the server said:[/yellow] {reason}")
    if dry_run:
        console.print("[yellow]Dry run:[/yellow] nothing was sent or recorded.")
        return
    if not yes:
        click.confirm(f"Resume issue #{issue_id} for {queued:,} remaining recipients?", abort=True)
    run_issue(ctx, issue_id, "Resuming", delivery.resume, finished_ok=True)


def _count(session: Session, issue_id: int, *statuses: DeliveryStatus) -> int:
    from sqlalchemy import func, select

    from ..models import Delivery

    return int(
        session.scalar(
            select(func.count())
            .select_from(Delivery)
            .where(Delivery.issue_id == issue_id, Delivery.status.in_(statuses))
        )
        or 0
    )


COMMANDS: list[click.Command] = [send_command, issues_group]
