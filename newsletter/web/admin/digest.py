"""``/admin/next``: the next digest as readers will get it; test, send now, skip today.

The preview is built the way ``newsletter send`` builds its confirmation draft:
the real :func:`~newsletter.mail.build_issue` in a write transaction that is
always rolled back, then the per-recipient message bytes from
:func:`~newsletter.mail.build_single`, so the frame shows exactly the bytes a reader
would receive (with the editor as the recipient).  It is framed from its own route
with a CSP that forbids scripts, inside a sandboxed iframe.

"Send now" follows the CLI's rules: an unfinished issue is resumed rather than a
second one started, one digest per day, nothing recorded before the confirmation.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import shutil

# Bandit B404: subprocess runs only Debian's spamassassin, with a fixed argument list.
import subprocess  # nosec B404
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from email.message import EmailMessage
from typing import Any

from flask import request, url_for
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response

from ... import delivery
from ...mail import AlreadySentToday, build_issue, build_single, local_today
from ...mail.digest import store_note, stored_note
from ...models import Issue, IssueKind, IssueStatus, utcnow
from .base import admin, admin_state, confirm_page, ctx, done, editor, framed, page, web

NOTE_MAX = 1000  # the digest shows at most this much (mail.render.NOTE_MAX)


@dataclass
class Preview:
    """What the next digest is, for the page (``issue_id`` set: an existing issue)."""

    subject: str
    html: str
    text: str
    stories: list[tuple[int, str]]
    day: date | None
    issue_id: int | None = None
    issue_status: str | None = None
    note: str = ""
    sendable: bool = True
    why_not: str | None = None


@contextmanager
def _rolled_back() -> Iterator[Session]:
    session = ctx().db.session()
    try:
        session.begin()
        yield session
    finally:
        session.rollback()
        session.close()


def read_note(session: Session) -> str:
    return stored_note(session)


def _build(session: Session, today: date | None = None) -> Issue | None:
    """The digest as ``build_issue`` makes it (the stored editor's note included)."""
    return build_issue(session, ctx(), today=today)


def _from_issue(issue: Issue, note: str, **extra: Any) -> Preview:
    stories = [(link.story.id, link.story.title) for link in issue.stories]
    return Preview(
        issue.subject, issue.html, issue.text, stories, issue.digest_date, note=note, **extra
    )


def next_preview() -> Preview | None:
    """The unfinished issue, else today's digest draft, else the next day's; None: nothing."""
    with ctx().db.read() as session:
        note = read_note(session)
        unfinished = delivery.unfinished_issue(session)
        if unfinished is not None:
            return _from_issue(
                unfinished,
                note,
                issue_id=unfinished.id,
                issue_status=unfinished.status.value,
                sendable=False,
                why_not=f"Issue #{unfinished.id} is still {unfinished.status.value}.",
            )
    with _rolled_back() as session:
        try:
            issue = _build(session)
            return _from_issue(issue, note) if issue is not None else None
        except AlreadySentToday as exc:
            tomorrow = local_today(ctx().settings) + timedelta(days=1)
            issue = _build(session, today=tomorrow)
            if issue is None:
                return None
            why = f"Today's digest exists already (issue #{exc.issue_id}, {exc.status})."
            return _from_issue(issue, note, sendable=False, why_not=why)


def reader_copy(preview: Preview, to_email: str, test: bool = False) -> bytes:
    subject = f"[TEST] {preview.subject}" if test else preview.subject
    built = build_single(
        ctx(), to_email, "", subject, preview.html, preview.text, issue_id=preview.issue_id
    )
    return built.data


def _parts(data: bytes) -> tuple[str, str]:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    html = msg.get_body(preferencelist=("html",))
    text = msg.get_body(preferencelist=("plain",))
    return (
        str(html.get_content()) if html is not None else "",
        str(text.get_content()) if text is not None else "",
    )


def spam_score(data: bytes, key: str) -> str:
    """SpamAssassin's verdict on the bytes (local tests only, no network), cached per draft."""
    cache = admin_state().spam_scores
    if key in cache:
        return cache[key]
    binary = shutil.which("spamassassin")
    if binary is None:
        return "not available (spamassassin is not installed)"
    try:
        # Bandit B603: a fixed argument list; the message goes to stdin, never to a shell.
        result = subprocess.run(  # nosec B603
            [binary, "-L", "-t"], input=data, capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not run spamassassin: {exc}"
    verdict = email.message_from_bytes(result.stdout).get("X-Spam-Status", "")
    score = " ".join(verdict.split())
    cache[key] = score or "spamassassin gave no verdict"
    return cache[key]


def _recipients() -> int:
    with ctx().db.read() as session:
        return delivery.active_count(session)


@admin.get("/next")
def next_digest() -> tuple[str, int]:
    preview = next_preview()
    values: dict[str, Any] = {"preview": preview}
    if preview is not None:
        data = reader_copy(preview, editor().email)
        html, text = _parts(data)
        key = hashlib.sha256((preview.subject + preview.html + preview.text).encode()).hexdigest()
        values.update(
            text=text,
            size=len(data),
            html_size=len(html.encode()),
            spam=spam_score(data, key) if request.args.get("spam") else None,
            spam_cached=admin_state().spam_scores.get(key),
        )
    with ctx().db.read() as session:
        values["note"] = read_note(session)
    return page("next.html", recipients=_recipients(), today=local_today(ctx().settings), **values)


@admin.get("/next/preview.html")
def next_preview_frame() -> Response:
    preview = next_preview()
    if preview is None:
        return framed("<!doctype html><p>Nothing is waiting for the next digest.</p>")
    html, _ = _parts(reader_copy(preview, editor().email))
    return framed(html)


@admin.post("/next/note")
def next_note() -> Response:
    """The note above the lead of the next digest, whoever sends it (timetable, admin, CLI)."""
    note = request.form.get("note", "").replace("\r\n", "\n").strip()[:NOTE_MAX]
    with web().write() as session:
        store_note(session, note)
    return done("Editor's note saved." if note else "Editor's note removed.", "admin.next_digest")


@admin.post("/send-test")
def send_test() -> Response:
    """The next digest's [TEST] copy to the logged-in editor, and to nobody else."""
    to = editor().email
    preview = next_preview()
    if preview is None:
        return done("Nothing is waiting: there is no digest to test.", "admin.next_digest", "error")
    data = reader_copy(preview, to, test=True)
    transport = delivery.open_transport(ctx().settings)
    try:
        outcome = transport.send(ctx().settings.from_email, to, data)
    finally:
        transport.close()
    if outcome.outcome is not delivery.Outcome.SENT:
        return done(
            f"The test copy to {to} was refused: {outcome.text}", "admin.next_digest", "error"
        )
    return done(f"A test copy went to {to} (and to nobody else).", "admin.next_digest")


@admin.get("/next/send")
def send_confirm() -> tuple[str, int] | Response:
    preview = next_preview()
    if preview is None or not preview.sendable:
        why = preview.why_not if preview is not None else "Nothing is waiting."
        return done(f"There is nothing to send now. {why or ''}", "admin.next_digest", "error")
    n = _recipients()
    return confirm_page(
        "Send the digest now?",
        f"“{preview.subject}” goes to {n:,} active reader{'s' if n != 1 else ''} now. "
        "This cannot be undone.",
        url_for("admin.send_now"),
        f"Send to {n:,} readers",
        url_for("admin.next_digest"),
    )


def create_issue() -> int | None:
    """Freeze and enqueue today's digest (one transaction), or None if nothing to send."""
    with web().write() as session:
        if delivery.unfinished_issue(session) is not None:
            return None
        issue = _build(session)
        if issue is None:
            return None
        delivery.enqueue(session, issue.id)
        return issue.id


@admin.post("/next/send")
def send_now() -> Response:
    if request.form.get("confirmed") != "yes":
        return done("Sending needs the confirmation.", "admin.send_confirm", "error")
    if _recipients() == 0:
        return done("There are no active readers: nothing was sent.", "admin.next_digest", "error")
    try:
        issue_id = create_issue()
    except AlreadySentToday as exc:
        return done(f"Not sent: {exc}.", "admin.next_digest", "error")
    if issue_id is None:
        return done(
            "Nothing new to send (or an issue is unfinished).", "admin.next_digest", "error"
        )
    start_send(issue_id)
    return done(f"Issue #{issue_id} is being sent.", "admin.issue", issue_id=issue_id)


def start_send(issue_id: int) -> bool:
    context, state = ctx(), admin_state()
    return state.start(
        issue_id, "send", lambda: delivery.send_issue(context, issue_id, stop=state.stop)
    )


@admin.post("/next/skip")
def skip_today() -> Response:
    """No digest today: a cancelled digest for today holds the one-per-day slot."""
    day = local_today(ctx().settings)
    with web().write() as session:
        if session.query(Issue).filter(Issue.digest_date == day).first() is not None:
            return done(
                f"Today's digest ({day:%d %B}) exists already: nothing to skip.",
                "admin.next_digest",
                "error",
            )
        session.add(
            Issue(
                kind=IssueKind.DIGEST,
                subject=f"(skipped by {editor().email})",
                status=IssueStatus.CANCELLED,
                status_reason=f"skipped by {editor().email}",
                html="",
                text="",
                preheader="",
                digest_date=day,
                finished_at=utcnow(),
            )
        )
    return done(
        f"No digest today ({day:%d %B}); the waiting stories go out with the next one.",
        "admin.next_digest",
    )
