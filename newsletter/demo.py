"""``newsletter demo``: the README quickstart in one command, on embedded defaults.

Creates the database (``subscribers.db`` unless configured otherwise), imports the
sample stories and readers shipped in ``newsletter/examples/`` (inside the wheel,
so a plain ``pip install .`` has them), sends today's digest into the Maildir
outbox through the real delivery engine, and writes the newest message's HTML part
(the digest just sent, not an older file in the outbox) to ``preview.html``.  It
never uses ``NEWSLETTER_SMTP_URL``: a demo must not mail anyone, even on a machine
configured for production.
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass, replace
from email.message import EmailMessage
from pathlib import Path

from .config import Settings
from .context import Context
from .delivery import SendSummary, enqueue, send_issue, unfinished_issue
from .mail import AlreadySentToday, build_issue

EXAMPLES = Path(__file__).resolve().parent / "examples"
STORIES = EXAMPLES / "stories.xml"
READERS = EXAMPLES / "subscribers.csv"


@dataclass
class DemoResult:
    database: str
    outbox: Path
    stories_added: int
    readers_added: int
    summary: SendSummary | None
    note: str | None
    preview: Path | None
    messages: int


def demo_settings(settings: Settings) -> Settings:
    """The same settings, but mail always goes to the Maildir outbox."""
    return replace(settings, smtp_url=None)


def run_demo(settings: Settings, preview: Path = Path("preview.html")) -> DemoResult:
    from .stories import import_sources
    from .subscribers import import_csv

    ctx = Context.open(demo_settings(settings))
    try:
        with ctx.db.write() as session:
            report = import_sources(session, [str(STORIES)], feature=True)
            if not report.ok:
                problems = "; ".join(f"{r.source}: {r.error}" for r in report.failed)
                raise RuntimeError(f"the sample stories did not import: {problems}")
            with READERS.open("rb") as stream:
                readers = import_csv(session, stream, confirmed=True)
        note: str | None = None
        summary: SendSummary | None = None
        issue_id: int | None = None
        with ctx.db.write() as session:
            unfinished = unfinished_issue(session)
            if unfinished is not None:
                issue_id = unfinished.id
                note = f"resumed unfinished issue #{issue_id}"
            else:
                try:
                    issue = build_issue(session, ctx)
                except AlreadySentToday as exc:
                    note = f"today's digest was already sent ({exc}); showing it"
                    issue = None
                if issue is not None:
                    enqueue(session, issue.id)
                    issue_id = issue.id
                elif note is None:
                    note = "nothing new to send: the sample stories already went out"
        if issue_id is not None:
            summary = send_issue(ctx, issue_id)
        outbox = ctx.settings.outbox
        files = sorted((outbox / "new").glob("*"), key=lambda p: p.stat().st_mtime)
        written = _write_preview(files[-1], preview) if files else None  # newest: this run's
        return DemoResult(
            database=ctx.settings.database_url,
            outbox=outbox,
            stories_added=report.added,
            readers_added=readers.added,
            summary=summary,
            note=note,
            preview=written,
            messages=len(files),
        )
    finally:
        ctx.close()


def _write_preview(message_file: Path, target: Path) -> Path | None:
    """The HTML part of one delivered message, exactly as the reader gets it."""
    parsed = email.message_from_bytes(message_file.read_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    part = parsed.get_body(preferencelist=("html",))
    if part is None:
        return None
    content = part.get_content()
    target.write_text(content if isinstance(content, str) else str(content), encoding="utf-8")
    return target
