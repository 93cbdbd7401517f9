"""``/admin/stories``: find and filter, feature, add by hand, the next digest's order, re-import.

Titles come from feeds and may be hostile: templates autoescape everything and no
story text is ever marked safe.  Re-importing is limited to the configured feeds
(NEWSLETTER_FEEDS): the web app fetches no URL an editor types (no SSRF).
"""

from __future__ import annotations

from typing import Any

from flask import abort, request, url_for
from sqlalchemy import func, select
from werkzeug.wrappers import Response

from ...models import Story
from ...stories import InvalidStory, add_story, set_featured, unsent_clause
from ...stories.order import move, pin_lead, set_order, waiting
from .base import admin, ctx, done, page, web

PAGE_SIZE = 50


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _filtered(args: Any) -> tuple[list[Story], int | None]:
    query = select(Story)
    q = args.get("q", "").strip()[:200]
    if q:
        query = query.where(Story.title.ilike(_like(q), escape="\\"))
    featured = args.get("featured", "")
    if featured in ("yes", "no"):
        query = query.where(Story.featured.is_(featured == "yes"))
    if args.get("unsent"):
        query = query.where(unsent_clause())
    source = args.get("source", "")
    if source:
        query = query.where(Story.source == source)
    before = args.get("before", type=int)
    if before:
        query = query.where(Story.id < before)
    with ctx().db.read() as session:
        rows = list(session.scalars(query.order_by(Story.id.desc()).limit(PAGE_SIZE + 1)))
    more = rows[PAGE_SIZE].id + 1 if len(rows) > PAGE_SIZE else None
    return rows[:PAGE_SIZE], more


@admin.get("/stories")
def stories() -> tuple[str, int]:
    settings = ctx().settings
    rows, more = _filtered(request.args)
    with ctx().db.read() as session:
        queue = waiting(session)
        sources = [s for s in session.scalars(select(Story.source).distinct().limit(200)) if s]
        total = int(session.scalar(select(func.count()).select_from(Story)) or 0)
    args: dict[str, Any] = {k: v for k, v in request.args.items() if k != "before"}
    return page(
        "stories.html",
        rows=rows,
        queue=queue,
        in_digest=settings.max_stories,
        sources=sorted(sources),
        feeds=settings.feeds,
        total=total,
        args=args,
        older=url_for("admin.stories", before=more, **args) if more else None,
    )


def _back() -> str:
    target = request.form.get("back", "")
    return target if target.startswith("/admin/stories") else url_for("admin.stories")


def _redirect(message: str, category: str = "ok") -> Response:
    from flask import flash, redirect

    flash(message, category)
    return redirect(_back(), code=303)


@admin.post("/stories/<int:story_id>/feature")
def story_feature(story_id: int) -> Response:
    on = request.form.get("featured") == "1"
    with web().write() as session:
        missing = set_featured(session, [story_id], on)
    if missing:
        abort(404)
    return _redirect(f"Story #{story_id} {'featured' if on else 'unfeatured'}.")


@admin.post("/stories/<int:story_id>/pin")
def story_pin(story_id: int) -> Response:
    on = request.form.get("pinned", "1") == "1"
    with web().write() as session:
        story = pin_lead(session, story_id, on)
    if story is None:
        abort(404)
    return _redirect(f"Story #{story_id} {'is the lead now' if on else 'is no longer the lead'}.")


@admin.post("/stories/<int:story_id>/move")
def story_move(story_id: int) -> Response:
    offset = -1 if request.form.get("direction") == "up" else 1
    with web().write() as session:
        moved = move(session, story_id, offset)
    if not moved:
        return _redirect(f"Story #{story_id} is not waiting for the next digest.", "error")
    return _redirect(f"Story #{story_id} moved {'up' if offset < 0 else 'down'}.")


@admin.post("/stories/order")
def story_order() -> Response:
    """The whole order at once (the drag handle); ids not waiting are ignored."""
    wanted = [int(p) for p in request.form.get("order", "").split(",") if p.strip().isdigit()]
    with web().write() as session:
        queue = [s.id for s in waiting(session)]
        ids = [i for i in dict.fromkeys(wanted) if i in queue]
        set_order(session, ids + [i for i in queue if i not in ids])
    return _redirect("The order of the next digest is saved.")


@admin.post("/stories/add")
def story_add() -> Response | tuple[str, int]:
    form = request.form
    try:
        with web().write() as session:
            story, created = add_story(
                session,
                form.get("title", "")[:1000],
                form.get("url", "")[:2048],
                form.get("summary", "")[:5000],
                feature=form.get("feature") == "1",
            )
            story_id = story.id
    except InvalidStory as exc:
        return _redirect(f"The story was not added: {exc}.", "error")
    verb = "added" if created else "updated (a story with that URL existed)"
    return done(f"Story #{story_id} {verb}.", "admin.stories")


@admin.post("/stories/import")
def story_import() -> Response:
    """Fetch one configured feed now (not conditional), new stories featured."""
    from ...stories.store import fetch_and_parse, record_poll

    url = request.form.get("feed", "")
    if url not in ctx().settings.feeds:
        return _redirect("Only the feeds in NEWSLETTER_FEEDS can be imported here.", "error")
    allow = ctx().settings.feeds_allow_private
    polled = fetch_and_parse(url, None, None, allow_private=allow)  # no transaction: slow
    with web().write() as session:
        result = record_poll(session, url, polled, feature=True)
    if result.error:
        return _redirect(f"{url}: the import failed: {result.error}", "error")
    return _redirect(
        f"{url}: {result.added} added, {result.updated} updated, {result.unchanged} unchanged."
    )
