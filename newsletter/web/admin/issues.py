"""``/admin/issues``: the list, one issue's ledger, live progress, pause/resume/cancel/retry.

The actions keep the CLI's rules by calling the same ``delivery`` functions
(``resume``, ``retry_failed``, ``cancel``); a send runs in a background thread of
this process under the issue's lease, so a second sender anywhere is refused.
Pausing sets the issue ``paused`` (the running sender stops after the messages
in flight, exactly as for a 5.7.x refusal); resuming un-pauses and sends the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flask import abort, jsonify, request, url_for
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response

from ... import delivery
from ...delivery import ledger
from ...models import Delivery, DeliveryStatus, Issue, IssueStatus, Subscriber
from .base import admin, admin_state, confirm_page, ctx, done, editor, framed, page, web
from .hooks import bounce_diagnostics
from .stats import issue_rows, smtp_diagnostics, unsubscribed_after

MAX_ID = 2**63 - 1
ASSETS = {"admin.js": "text/javascript"}


def _issue_or_404(session: Session, issue_id: int) -> Issue:
    issue = session.get(Issue, issue_id) if issue_id <= MAX_ID else None
    if issue is None:
        abort(404)
    return issue


@admin.get("/issues")
def issues() -> tuple[str, int]:
    before = request.args.get("before", type=int)
    with ctx().db.read() as session:
        rows = issue_rows(session, limit=31, before=before)
    older = url_for("admin.issues", before=rows[29].id) if len(rows) > 30 else None
    return page("issues.html", rows=rows[:30], older=older)


def progress(issue_id: int) -> dict[str, object]:
    with ctx().db.read() as session:
        issue = _issue_or_404(session, issue_id)
        counts = ledger.counts(session, issue_id)
        status, reason = issue.status.value, issue.status_reason
    c = {k.value: v for k, v in counts.items()}
    total = sum(c.values())
    left = c["queued"] + c["sending"]
    return {
        "issue": issue_id,
        "status": status,
        "reason": reason,
        "total": total,
        "done": total - left,
        "left": left,
        "running": admin_state().running(issue_id),
        **c,
    }


@admin.get("/issues/<int:issue_id>/progress.json")
def issue_progress(issue_id: int) -> Response:
    response = jsonify(progress(issue_id))
    response.headers["Cache-Control"] = "no-store"
    return response


@admin.get("/issues/<int:issue_id>")
def issue(issue_id: int) -> tuple[str, int]:
    with ctx().db.read() as session:
        row = _issue_or_404(session, issue_id)
        stories = [(link.story.id, link.story.title) for link in row.stories]
        senders = delivery.other_senders(session, issue_id)
        diagnostics = smtp_diagnostics(session, issue_id)
        bounces = bounce_diagnostics(session, issue_id)
        unsubscribed = unsubscribed_after(session, issue_id, row.started_at)
        recent = session.execute(
            select(Subscriber.email, Delivery.status, Delivery.last_code, Delivery.sent_at)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(Delivery.issue_id == issue_id, Delivery.status != DeliveryStatus.QUEUED)
            .order_by(Delivery.sent_at.desc())
            .limit(10)
        ).all()
        failed = int(
            session.scalar(
                select(func.count())
                .select_from(Delivery)
                .where(Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.FAILED)
            )
            or 0
        )
    info = progress(issue_id)
    sending = row.status is IssueStatus.SENDING and (info["left"] or info["running"])
    return page(
        "issue.html",
        issue=row,
        info=info,
        stories=stories,
        senders=senders,
        diagnostics=diagnostics,
        bounces=bounces,
        unsubscribed=unsubscribed,
        recent=recent,
        failed=failed,
        live=bool(sending),
    )


@admin.get("/issues/<int:issue_id>/frozen.html")
def issue_frozen(issue_id: int) -> Response:
    from ...mail import public_copy

    with ctx().db.read() as session:
        row = _issue_or_404(session, issue_id)
        html = public_copy(row.html, base_url=ctx().settings.base_url, issue_id=row.id)
    return framed(html)


@admin.post("/issues/<int:issue_id>/pause")
def issue_pause(issue_id: int) -> Response:
    with web().write() as session:
        row = _issue_or_404(session, issue_id)
        if row.status is not IssueStatus.SENDING:
            return done(
                f"Issue #{issue_id} is {row.status.value}: it cannot be paused.",
                "admin.issue",
                "error",
                issue_id=issue_id,
            )
        row.status = IssueStatus.PAUSED
        row.status_reason = f"paused by {editor().email}"
    return done(
        f"Issue #{issue_id} is paused; resume it when ready.", "admin.issue", issue_id=issue_id
    )


def _start(issue_id: int, label: str, fn: Callable[..., object]) -> bool:
    """Run ``fn(ctx, issue_id)`` (``delivery.resume`` or ``retry_failed``) in a thread."""
    context, state = ctx(), admin_state()
    return state.start(issue_id, label, lambda: fn(context, issue_id, stop=state.stop))


def _busy(issue_id: int) -> Response:
    return done(
        f"Issue #{issue_id} is being sent from this server already.",
        "admin.issue",
        "error",
        issue_id=issue_id,
    )


@admin.post("/issues/<int:issue_id>/resume")
def issue_resume(issue_id: int) -> Response:
    with ctx().db.read() as session:
        row = _issue_or_404(session, issue_id)
        status = row.status
    if status in (IssueStatus.SENT, IssueStatus.CANCELLED):
        return done(
            f"Issue #{issue_id} is {status.value}: nothing to resume.",
            "admin.issue",
            "error",
            issue_id=issue_id,
        )
    if not _start(issue_id, "resume", delivery.resume):
        return _busy(issue_id)
    return done(f"Resuming issue #{issue_id}.", "admin.issue", issue_id=issue_id)


@admin.post("/issues/<int:issue_id>/retry-failed")
def issue_retry(issue_id: int) -> Response:
    with ctx().db.read() as session:
        row = _issue_or_404(session, issue_id)
        status = row.status
        failed = ledger.counts(session, issue_id)[DeliveryStatus.FAILED]
    if status is IssueStatus.CANCELLED:
        return done(f"Issue #{issue_id} is cancelled.", "admin.issue", "error", issue_id=issue_id)
    if failed == 0 and status is IssueStatus.SENT:
        return done(
            f"Issue #{issue_id} has no failed deliveries.",
            "admin.issue",
            "error",
            issue_id=issue_id,
        )
    if not _start(issue_id, "retry", delivery.retry_failed):
        return _busy(issue_id)
    return done(
        f"Retrying {failed:,} failed deliveries of issue #{issue_id}.",
        "admin.issue",
        issue_id=issue_id,
    )


@admin.get("/issues/<int:issue_id>/cancel")
def issue_cancel_confirm(issue_id: int) -> tuple[str, int]:
    info = progress(issue_id)
    return confirm_page(
        f"Cancel issue #{issue_id}?",
        f"Nobody else will receive it: {info['left']:,} deliveries still queued will not be "
        f"sent ({info['sent']:,} readers already have it). Its stories can go out again.",
        url_for("admin.issue_cancel", issue_id=issue_id),
        "Cancel the issue",
        url_for("admin.issue", issue_id=issue_id),
    )


@admin.post("/issues/<int:issue_id>/cancel")
def issue_cancel(issue_id: int) -> Response:
    if request.form.get("confirmed") != "yes":
        return done(
            "Cancelling needs the confirmation.",
            "admin.issue_cancel_confirm",
            "error",
            issue_id=issue_id,
        )
    with web().write() as session:
        _issue_or_404(session, issue_id)
        try:
            delivery.cancel(session, issue_id)
        except delivery.IssueStateError as exc:
            return done(f"Not cancelled: {exc}.", "admin.issue", "error", issue_id=issue_id)
    return done(f"Issue #{issue_id} is cancelled.", "admin.issue", issue_id=issue_id)


@admin.get("/assets/<name>")
def asset(name: str) -> Response:
    """The admin's one script (progressive touches only; every page works without it)."""
    kind = ASSETS.get(name)
    if kind is None:
        abort(404)
    path = Path(ctx().templates_dir) / "admin" / "assets" / name
    response = Response(path.read_bytes(), mimetype=kind)
    response.headers["Cache-Control"] = "private, max-age=300"
    return response
