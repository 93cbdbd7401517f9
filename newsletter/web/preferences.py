"""``/preferences/<token>``: a reader chooses daily or weekly, sections, a pause.

Linked from every digest (a per-recipient link, like unsubscribe) and from the
confirmation and welcome emails.  The token is signed like the unsubscribe token
(its own salt, never expires) and carries only the subscriber id; a tampered one
is a 400.  GET shows the form and changes nothing (link scanners open it); POST
needs the page's CSRF token (the form is ours, same-origin) and saves.  The page
also carries the unsubscribe button (a POST to the reader's unsubscribe link).
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, abort, current_app, render_template, request

from ..context import Context
from ..models import Frequency, Subscriber, SubscriberStatus, utcnow
from ..subscribers import InvalidToken
from ..subscribers.preferences import (
    PAUSE_WEEKS,
    Choice,
    NoSectionChosen,
    apply_choice,
    available_sections,
    decode_sections,
    is_paused,
)
from .guard import csrf_valid, no_referrer

blueprint = Blueprint("preferences", __name__)

_TOKEN = re.compile(r"[A-Za-z0-9_.\-]{1,512}")


def _ctx() -> Context:
    ctx: Context = current_app.extensions["newsletter"].ctx
    return ctx


def _subscriber_id(token: str) -> int:
    no_referrer()
    if not _TOKEN.fullmatch(token):
        abort(400)
    try:
        return _ctx().tokens.read_preferences(token)
    except InvalidToken:
        abort(400)


def _page(
    token: str, subscriber: Subscriber, sections: list[str], status: int = 200, **extra: Any
) -> tuple[str, int]:
    ctx = _ctx()
    chosen = decode_sections(subscriber.sections)
    values = {
        "token": token,
        "unsubscribe_token": ctx.tokens.unsubscribe(subscriber.id),
        "frequency": Frequency(subscriber.frequency).value,
        "sections": sections,
        "chosen": set(sections) if chosen is None else chosen,
        "paused_until": subscriber.paused_until if is_paused(subscriber) else None,
        "pause_weeks": PAUSE_WEEKS,
        "unsubscribed": subscriber.status == SubscriberStatus.UNSUBSCRIBED,
        "saved": False,
        "error": None,
    }
    return render_template("web/preferences.html", **(values | extra)), status


@blueprint.get("/preferences/<token>")
def preferences_page(token: str) -> tuple[str, int]:
    subscriber_id = _subscriber_id(token)
    with _ctx().db.read() as session:
        subscriber = session.get(Subscriber, subscriber_id)
        if subscriber is None:
            abort(404)
        return _page(token, subscriber, available_sections(session))


def _choice(sections: list[str]) -> Choice | str:
    """The posted form as a :class:`Choice`, or the error to show."""
    form = request.form
    try:
        frequency = Frequency(form.get("frequency", ""))
    except ValueError:
        return "Choose daily or weekly."
    chosen: frozenset[str] | None = None
    if sections and form.get("sections_shown"):
        chosen = frozenset(form.getlist("section"))
    pause = form.get("pause", "")
    pause_weeks = int(pause) if pause.isdigit() and int(pause) in PAUSE_WEEKS else None
    if pause not in ("", "resume") and pause_weeks is None:
        return "Choose a pause of 2 or 4 weeks."
    return Choice(frequency, chosen, pause_weeks, resume=pause == "resume")


@blueprint.post("/preferences/<token>")
def save_preferences(token: str) -> tuple[str, int]:
    subscriber_id = _subscriber_id(token)
    state = current_app.extensions["newsletter"]
    with state.write() as session:
        subscriber = session.get(Subscriber, subscriber_id)
        if subscriber is None:
            abort(404)
        sections = available_sections(session)
        if not csrf_valid():
            return _page(token, subscriber, sections, 400, error="Your form had expired. "
                         "Please submit it again.")  # fmt: skip
        choice = _choice(sections)
        if isinstance(choice, str):
            return _page(token, subscriber, sections, 400, error=choice)
        try:
            apply_choice(session, subscriber_id, choice, sections, now=utcnow())
        except NoSectionChosen:  # raised before anything was changed
            return _page(
                token, subscriber, sections, 400,
                error="Choose at least one section, or unsubscribe below.",
            )  # fmt: skip
        return _page(token, subscriber, sections, saved=True)
