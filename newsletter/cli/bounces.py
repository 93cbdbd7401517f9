"""``newsletter bounces scan SOURCE... | list``: what came back after the 250.

``scan`` reads Maildirs, mboxes, ``.eml`` files and imap[s]:// or pop3[s]:// URLs,
applies what each message says (one transaction per message) and marks it
processed in its mailbox; ``--dry-run`` changes nothing anywhere, ``--json``
prints the DESIGN.md contract, one object per line per recipient.  ``list``
shows the recorded events and what was done about each.

Text from bounces is untrusted: control characters are removed before anything
reaches the terminal.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime, timedelta

import click

from .state import AppState, pass_state

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _clean(text: str | None, limit: int = 200) -> str:
    return _CONTROL.sub(" ", text or "")[:limit]


@click.group("bounces")
def bounces_group() -> None:
    """Bounces and complaints: read them from mailboxes, see what was done."""


@bounces_group.command("scan")
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@click.option("--dry-run", is_flag=True, help="Analyse and match only; change nothing anywhere.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line per recipient.")
@pass_state
def scan_cmd(state: AppState, sources: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
    """Read bounces from each SOURCE and apply them.

    A SOURCE is a Maildir, an mbox, .eml files or a folder of them,
    imaps://user:pass@host[:port]/INBOX (processed messages are flagged and moved
    to ?processed=FOLDER, default Processed), or pop3s://user:pass@host[:port]
    (processed messages are deleted). Re-reading a message changes nothing.
    """
    from ..bounces.scan import ScanLine, scan
    from ..bounces.sources import SourceError

    def show(line: ScanLine) -> None:
        if as_json:
            click.echo(json.dumps(line.as_json(), ensure_ascii=False))
            return
        a = line.applied
        note = "already recorded" if a.duplicate else a.action
        click.echo(
            f"{_clean(line.source, 80)}  {_clean(a.finding.recipient) or '-'}  {a.finding.type}"
            f"  {a.finding.status or '-'}  {_clean(note, 120)}"
        )

    try:
        summary = scan(state.ctx, list(sources), dry_run=dry_run, on_line=show)
    except SourceError as exc:
        raise click.ClickException(_clean(str(exc), 300)) from None
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(summary.by_type.items())) or "nothing"
    done = "read (dry run, nothing changed)" if dry_run else "processed"
    click.echo(
        f"{summary.messages} message(s) {done}: {kinds}"
        + (f"; {summary.duplicates} seen before" if summary.duplicates else ""),
        err=True,
    )
    for path in summary.unreadable:
        click.echo(f"unreadable, left in place: {_clean(path, 300)}", err=True)


def _since(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC) - timedelta(days=30)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a date (YYYY-MM-DD)", param_hint="--since"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@bounces_group.command("list")
@click.option("--since", "since", metavar="DATE", help="From this date (default: 30 days ago).")
@pass_state
def list_cmd(state: AppState, since: str | None) -> None:
    """Show the bounces and complaints received, and what was done about each."""
    from sqlalchemy import select

    from ..models import BounceEvent

    start = _since(since)
    with state.ctx.db.read() as session:
        events = session.scalars(
            select(BounceEvent).where(BounceEvent.received_at >= start).order_by(BounceEvent.id)
        ).all()
    header = ("Received", "Recipient", "Type", "Status", "Issue", "Action", "Text")
    rows = [
        (
            f"{e.received_at:%Y-%m-%d %H:%M}",
            _clean(e.recipient) or "-",
            e.type.value,
            e.status or "-",
            str(e.issue_id or "-"),
            _clean(e.action, 80),
            _clean(e.text, 100),
        )
        for e in events
    ]
    if rows:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        for row in (header, *rows):
            sys.stdout.write(
                "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n"
            )
    click.echo(f"{len(rows)} event(s) since {start:%Y-%m-%d}")


COMMANDS = [bounces_group]
