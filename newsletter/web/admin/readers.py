"""``/admin/subscribers``: find readers, add, import, export, remove or erase, history.

Paging is keyset (``id < last id seen``, newest first), never OFFSET, so the last
page of 100,000 readers costs what the first does (``bench/bench_admin.py``).
The rules are the subscribers stage's own: an unsubscribed or bounced address is
never re-added, an import reports every rejected row with its line number.
"""

from __future__ import annotations

import io
from typing import Any

from flask import abort, request, url_for
from sqlalchemy import or_, select
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response

from ... import subscribers as subs
from ...models import Delivery, Issue, Subscriber, SubscriberStatus
from .base import admin, ctx, done, page, web
from .hooks import reader_events

PAGE_SIZE = 50


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search(
    session: Session, q: str = "", status: str = "", before: int | None = None, limit: int = 50
) -> tuple[list[Subscriber], int | None]:
    """One page of readers, newest first, and the cursor of the next page (or None)."""
    query = select(Subscriber)
    q = q.strip()[:200]
    if q:
        pattern = _like(q.lower())
        query = query.where(
            or_(
                Subscriber.email.like(pattern, escape="\\"),
                Subscriber.name.ilike(_like(q), escape="\\"),
            )
        )
    if status in {s.value for s in SubscriberStatus}:
        query = query.where(Subscriber.status == SubscriberStatus(status))
    if before is not None:
        query = query.where(Subscriber.id < before)
    rows = list(session.scalars(query.order_by(Subscriber.id.desc()).limit(limit + 1)))
    cursor = rows[limit - 1].id if len(rows) > limit else None
    return rows[:limit], cursor


@admin.get("/subscribers")
def readers(report: Any = None, status_code: int = 200) -> tuple[str, int]:
    args = request.args
    q, status = args.get("q", ""), args.get("status", "")
    before = args.get("before", type=int)
    with ctx().db.read() as session:
        rows, cursor = search(session, q, status, before, PAGE_SIZE)
        counts = subs.count_by_status(session)
    keep: dict[str, Any] = {k: v for k, v in (("q", q), ("status", status)) if v}
    return page(
        "readers.html",
        status_code,
        rows=rows,
        q=q,
        current_status=status,
        statuses=[s.value for s in SubscriberStatus],
        counts={k.value: v for k, v in counts.items()},
        older=url_for("admin.readers", before=cursor, **keep) if cursor else None,
        first=url_for("admin.readers", **keep) if before else None,
        report=report,
    )


@admin.post("/subscribers/add")
def reader_add() -> Response:
    form = request.form
    try:
        with web().write() as session:
            reader = subs.add_subscriber(
                session,
                form.get("email", "")[:512],
                form.get("name", "")[:512],
                confirmed=form.get("confirmed") == "1",
                source="admin",
            )
            email, status = reader.email, reader.status.value
    except subs.InvalidEmail as exc:
        return done(f"Not added: {exc}", "admin.readers", "error")
    except subs.Suppressed as exc:
        return done(f"Not added: {exc}", "admin.readers", "error")
    return done(f"{email} is {status}.", "admin.readers")


@admin.post("/subscribers/import")
def import_readers() -> tuple[str, int]:
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        return readers(report={"error": "Choose a CSV file to import."}, status_code=400)
    try:
        parsed = subs.parse_csv(upload.read())
    except subs.CsvError as exc:
        return readers(report={"error": f"{exc}; nothing was imported."}, status_code=400)
    with web().write() as session:
        result = subs.apply_import(session, parsed, confirmed=request.form.get("confirmed") == "1")
    problems = sorted(
        [("rejected", p) for p in result.rejected] + [("skipped", p) for p in result.skipped],
        key=lambda item: item[1].line,
    )
    return readers(report={"result": result, "problems": problems, "name": upload.filename})


@admin.get("/subscribers/export.csv")
def export_readers() -> Response:
    out = io.StringIO()
    with ctx().db.read() as session:
        subs.export_csv(session, out)
    response = Response(out.getvalue(), mimetype="text/csv")
    response.headers["Content-Disposition"] = 'attachment; filename="subscribers.csv"'
    return response


def _reader_or_404(session: Session, reader_id: int) -> Subscriber:
    reader = session.get(Subscriber, reader_id) if reader_id < 2**63 else None
    if reader is None:
        abort(404)
    return reader


@admin.get("/subscribers/<int:reader_id>")
def reader(reader_id: int) -> tuple[str, int]:
    with ctx().db.read() as session:
        row = _reader_or_404(session, reader_id)
        received = session.execute(
            select(
                Issue.id,
                Issue.subject,
                Delivery.status,
                Delivery.sent_at,
                Delivery.last_code,
                Delivery.last_response,
            )
            .join(Issue, Issue.id == Delivery.issue_id)
            .where(Delivery.subscriber_id == reader_id)
            .order_by(Issue.id.desc())
            .limit(100)
        ).all()
        events = reader_events(session, reader_id)
    return page("reader.html", reader=row, received=received, events=events)


@admin.get("/subscribers/<int:reader_id>/remove")
def reader_remove_confirm(reader_id: int) -> tuple[str, int]:
    erase = request.args.get("erase") == "1"
    with ctx().db.read() as session:
        email = _reader_or_404(session, reader_id).email
    if erase:
        question = (
            f"Erase {email}? Every record of this reader (the address, name, consent record and "
            "what was sent to them) is deleted for good. The address is then unknown and could "
            "sign up again."
        )
    else:
        question = (
            f"Unsubscribe {email}? They get no more mail; the record stays so that no import "
            "or signup by someone else re-adds them."
        )
    return page(
        "confirm.html",
        title="Erase this reader?" if erase else "Unsubscribe this reader?",
        question=question,
        action=url_for("admin.reader_remove", reader_id=reader_id, erase="1" if erase else None),
        button="Erase for good" if erase else "Unsubscribe",
        back=url_for("admin.reader", reader_id=reader_id),
        danger=True,
    )


@admin.post("/subscribers/<int:reader_id>/remove")
def reader_remove(reader_id: int) -> Response:
    erase = request.args.get("erase") == "1"
    if request.form.get("confirmed") != "yes":
        return done(
            "Removing needs the confirmation.", "admin.reader", "error", reader_id=reader_id
        )
    with web().write() as session:
        email = _reader_or_404(session, reader_id).email
        removal = subs.remove(session, email, erase=erase)
    if removal.erased:
        return done(f"{removal.email} is erased.", "admin.readers")
    return done(f"{removal.email} is unsubscribed.", "admin.reader", reader_id=reader_id)
