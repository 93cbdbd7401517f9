"""``newsletter issues list | show ID | resume ID | cancel ID | retry-failed ID``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from .sendview import console, run_issue

if TYPE_CHECKING:
    from ..bounces.report import IssueBounces
from .state import AppState, check_signing, pass_state, require_real_settings

_STYLE = {"sent": "green", "sending": "yellow", "paused": "red", "cancelled": "dim"}


@click.group("issues")
def issues_group() -> None:
    """Past and unfinished issues: inspect, resume, cancel, retry failures."""


@issues_group.command("list")
@click.option("--limit", default=20, show_default=True, help="How many of the newest issues.")
@pass_state
def list_issues(state: AppState, limit: int) -> None:
    """The newest issues with their delivery counts."""

    from rich.table import Table
    from sqlalchemy import func, select

    from ..models import Delivery, DeliveryStatus, Issue

    ctx = state.ctx
    with ctx.db.read() as session:
        issues = list(session.scalars(select(Issue).order_by(Issue.id.desc()).limit(limit)))
        ids = [i.id for i in issues]
        tally: dict[int, dict[str, int]] = {}
        for issue_id, status, n in session.execute(
            select(Delivery.issue_id, Delivery.status, func.count())
            .where(Delivery.issue_id.in_(ids))
            .group_by(Delivery.issue_id, Delivery.status)
        ):
            tally.setdefault(issue_id, {})[DeliveryStatus(status).value] = int(n)
        if not issues:
            console.print("No issues yet.")
            return
        table = Table("#", "Kind", "Status", "Created (UTC)", "Subject", "Sent", "Queued", "Failed")
        for issue in issues:
            t = tally.get(issue.id, {})
            total = sum(t.values())
            style = _STYLE.get(issue.status.value, "white")
            table.add_row(
                str(issue.id),
                issue.kind.value,
                f"[{style}]{issue.status.value}[/{style}]",
                f"{issue.created_at:%Y-%m-%d %H:%M}",
                issue.subject if len(issue.subject) <= 50 else issue.subject[:49] + "…",
                f"{t.get('sent', 0):,}/{total:,}",
                f"{t.get('queued', 0) + t.get('sending', 0):,}",
                f"{t.get('failed', 0) + t.get('bounced', 0):,}",
            )
        console.print(table)


@issues_group.command("show")
@click.argument("issue_id", type=int)
@pass_state
def show_issue(state: AppState, issue_id: int) -> None:
    """Everything about one issue: status and why, stories, deliveries, errors."""

    from rich.table import Table
    from sqlalchemy import func, select

    from .. import delivery
    from ..bounces.report import issue_bounces
    from ..delivery import ledger, quota
    from ..delivery.variants import describe_variants
    from ..models import Delivery, DeliveryStatus, Issue, IssueStatus

    ctx = state.ctx
    with ctx.db.read() as session:
        issue = session.get(Issue, issue_id)
        if issue is None:
            raise click.ClickException(f"there is no issue {issue_id}")
        counts = ledger.counts(session, issue_id)
        next_retry = ledger.next_retry(session, issue_id)
        senders = delivery.other_senders(session, issue_id)
        quota_left = quota.allowance(session, ctx.settings, 1)
        used = quota.used_today(session, ctx.settings) if ctx.settings.daily_limit else 0
        stories = [(link.story.id, link.story.title) for link in issue.stories]
        came_back = issue_bounces(session, issue_id)
        renderings = describe_variants(session, issue_id)
        errors = session.execute(
            select(Delivery.status, Delivery.last_code, Delivery.last_response, func.count())
            .where(
                Delivery.issue_id == issue_id,
                Delivery.status.in_(
                    [DeliveryStatus.FAILED, DeliveryStatus.BOUNCED, DeliveryStatus.QUEUED]
                ),
                Delivery.last_response.is_not(None),
            )
            .group_by(Delivery.status, Delivery.last_code, Delivery.last_response)
            .order_by(func.count().desc())
            .limit(8)
        ).all()
        status = issue.status
        style = _STYLE.get(status.value, "white")
        console.print(f"[bold]Issue #{issue.id}[/bold] ({issue.kind.value})  {issue.subject}")
        console.print(f"Status: [{style}]{issue.status.value}[/{style}]")
        if issue.status_reason:
            console.print(f"Reason: {issue.status_reason}")
        if ctx.settings.daily_limit:
            console.print(f"Daily limit: {used:,} of {ctx.settings.daily_limit:,} used today")
        for label, when in (
            ("Created", issue.created_at),
            ("Started", issue.started_at),
            ("Finished", issue.finished_at),
        ):
            if when is not None:
                console.print(f"{label}: {when:%Y-%m-%d %H:%M:%S} UTC")
        for host, pid, rows in senders:
            console.print(f"Being sent by pid {pid} on {host} ({rows:,} rows in flight)")
    console.print(f"Stories ({len(stories)}):")
    for position, (story_id, title) in enumerate(stories, 1):
        console.print(f"  {position}. {title}  [dim](#{story_id})[/dim]")
    if renderings:  # readers' section choices: one rendering per section set
        console.print(f"Section renderings ({len(renderings)}):")
        for line in renderings:
            console.print(f"  {line}", markup=False)
    table = Table("Deliveries", "Count", title=None)
    for kind in DeliveryStatus:
        table.add_row(kind.value, f"{counts[kind]:,}")
    table.add_row("[bold]total[/bold]", f"[bold]{sum(counts.values()):,}[/bold]")
    console.print(table)
    _print_bounces(came_back)
    left = counts[DeliveryStatus.QUEUED] + counts[DeliveryStatus.SENDING]
    if left and status is IssueStatus.SENDING and quota_left is not None and quota_left.count == 0:
        console.print(f"{left:,} queued until tomorrow: {quota_left.reason}")
    elif left and status in (IssueStatus.SENDING, IssueStatus.PAUSED):
        retry = f", next retry {next_retry:%H:%M:%S} UTC" if next_retry else ""
        console.print(f"{left:,} still queued{retry}: run 'newsletter issues resume {issue_id}'")
    if errors:
        err = Table("Status", "Server reply", "Recipients", title="Last server replies")
        for row_status, code, text, n in errors:
            err.add_row(DeliveryStatus(row_status).value, f"{code or ''} {text}".strip(), f"{n:,}")
        console.print(err)


def _print_bounces(report: IssueBounces) -> None:
    """Bounced/complained/policy counts after the 250 (issue 11), and the policy warning."""
    from rich.table import Table
    from rich.text import Text

    from ..models import BounceType

    table = Table("After delivery", "Count")
    for label, kind in (
        ("Bounced (hard)", BounceType.HARD),
        ("Soft bounces", BounceType.SOFT),
        ("Complained", BounceType.COMPLAINT),
        ("Policy (refused us)", BounceType.POLICY),
    ):
        table.add_row(label, f"{report.count(kind):,}")
    console.print(table)
    warning = report.policy_warning
    if warning is not None:  # the diagnostic is a remote server's text: no markup
        console.print(Text("Warning: " + warning, style="bold red"))


@issues_group.command("resume")
@click.argument("issue_id", type=int)
@pass_state
def resume_issue(state: AppState, issue_id: int) -> None:
    """Send what is left of an interrupted or paused issue (sent rows are never resent)."""

    from .. import delivery

    require_real_settings(state.ctx, "resume")

    check_signing(state.ctx.settings)
    run_issue(state.ctx, issue_id, "Resuming", delivery.resume)


@issues_group.command("retry-failed")
@click.argument("issue_id", type=int)
@pass_state
def retry_failed_issue(state: AppState, issue_id: int) -> None:
    """Queue permanently failed deliveries again and send them (bounces stay bounced)."""

    from .. import delivery

    require_real_settings(state.ctx, "retry")

    check_signing(state.ctx.settings)
    run_issue(state.ctx, issue_id, "Retrying", delivery.retry_failed)


@issues_group.command("cancel")
@click.argument("issue_id", type=int)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def cancel_issue(state: AppState, issue_id: int, yes: bool) -> None:
    """Stop an issue for good; its stories become eligible for the next digest."""

    from .. import delivery
    from ..delivery import ledger
    from ..models import DeliveryStatus

    ctx = state.ctx
    if not yes:
        click.confirm(f"Cancel issue #{issue_id}? Nobody else will receive it", abort=True)
    with ctx.db.write() as session:
        try:
            delivery.cancel(session, issue_id)
        except delivery.IssueStateError as exc:
            raise click.ClickException(str(exc)) from None
        senders = delivery.other_senders(session, issue_id)
        counts = ledger.counts(session, issue_id)
    console.print(
        f"Issue #{issue_id} cancelled ({counts[DeliveryStatus.SENT]:,} had already received it)."
    )
    for host, pid, _rows in senders:
        console.print(f"The sender pid {pid} on {host} stops after the messages in flight.")
