"""The ``public`` blueprint: subscribe, confirm, unsubscribe, archive, health.

One function per route; the rules they keep are listed in :mod:`newsletter.web.app`.
What the routes share (the Context, the limiters, the confirmation mailer) is the
app's :class:`~newsletter.web.app.WebState`, found through ``current_app`` so that
this module never imports the factory that registers it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import TYPE_CHECKING, Any, overload

from flask import Blueprint, abort, current_app, render_template, request
from sqlalchemy import select

from .. import subscribers as subs
from ..context import Context
from ..mail import addr_spec
from ..models import Issue, IssueStatus, Subscriber, SubscriberStatus
from ..subscribers import ExpiredToken, InvalidToken
from ..subscribers.addresses import reader_reason
from . import guard, origins
from .confirmations import Confirmation
from .embed import HONEYPOT_FIELD as HONEYPOT_FIELD  # our form and the embed: one name
from .guard import address_key, csrf_valid, error_page, ip_key, no_referrer
from .welcome import welcome_for

if TYPE_CHECKING:
    from .app import WebState

log = logging.getLogger("newsletter.web")

MAX_TOKEN_LENGTH = 512
MAX_ISSUE_ID = 2**63 - 1  # SQLite's INTEGER; a larger id is simply not there
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_.\-]+")

blueprint = Blueprint("public", __name__)


def _state() -> WebState:
    """The app's shared state (set by ``create_app``)."""
    state: WebState = current_app.extensions["newsletter"]
    return state


def _ctx() -> Context:
    return _state().ctx


def _client_ip() -> str:
    return request.remote_addr or "unknown"


def _checked_token(token: str) -> str:
    """Reject absurd tokens before any crypto; the token page must not be cached or leaked."""
    no_referrer()
    if len(token) > MAX_TOKEN_LENGTH or not _TOKEN_CHARS.fullmatch(token):
        abort(400)
    return token


def _page(template: str, status: int = 200, **values: Any) -> tuple[str, int]:
    return render_template(f"web/{template}", **values), status


@overload
def _confirmation_for(subscriber: Subscriber, already: bool = False) -> Confirmation: ...
@overload
def _confirmation_for(subscriber: None, already: bool = False) -> None: ...
def _confirmation_for(subscriber: Subscriber | None, already: bool = False) -> Confirmation | None:
    """The email to queue once the transaction has committed (never before).

    ``already``: an active reader's address was typed in again; they get an
    "already subscribed" note, built with the same work as a confirmation.
    """
    if subscriber is None:
        return None
    ctx = _ctx()
    base = ctx.settings.base_url
    token = ctx.tokens.confirm(subscriber.id, subscriber.epoch or 0)
    url = f"{base}/confirm/{token}"
    preferences = f"{base}/preferences/{ctx.tokens.preferences(subscriber.id)}"
    return Confirmation(
        subscriber.id, subscriber.email, subscriber.name, url, already, preferences_url=preferences
    )


@blueprint.get("/")
@blueprint.get("/subscribe")
def subscribe_form() -> tuple[str, int]:
    return _page("subscribe.html", email="", name="", error=None, reason=None)


@blueprint.post("/subscribe")
def subscribe() -> Any:
    # From an allowed origin (the site's footer form) the Origin check stands in for
    # the CSRF token; answers go through ``origins.reply`` (page, 303 or JSON).
    state = _state()
    if origins.source() is not origins.Source.ALLOWED and not csrf_valid():
        page = _page("subscribe.html", 400, email="", name="", error="csrf", reason=None)
        return origins.reply(page, "csrf")
    if not state.limits.per_ip.hit(ip_key(_client_ip())):
        return origins.reply(error_page(429), "rate_limited")
    fields = origins.posted_fields()
    if fields.get(HONEYPOT_FIELD, "").strip():
        # A bot filled the invisible field: look successful, do nothing.
        log.info("honeypot filled from %s", _client_ip())
        return origins.reply(_page("check_inbox.html"), "check_inbox")
    raw_email = fields.get("email", "")[:512]
    raw_name = fields.get("name", "")[:512]
    try:
        email = addr_spec(subs.normalise_email(raw_email))
    except subs.InvalidEmail:
        reason = reader_reason(raw_email)
        page = _page(
            "subscribe.html", 400, email=raw_email, name=raw_name, error="email",
            reason=reason,
        )  # fmt: skip
        return origins.reply(page, "email", reason)
    except ValueError:  # valid, but unsafe in a header (an encoded word, ...)
        page = _page(
            "subscribe.html", 400, email=raw_email, name=raw_name, error="email",
            reason="This address cannot be used.",
        )  # fmt: skip
        return origins.reply(page, "email", "This address cannot be used.")
    if not state.limits.per_address.hit(address_key(email)):
        return origins.reply(error_page(429), "rate_limited")
    name = subs.form_name(raw_name)
    with state.write() as session:
        subscriber, needs_confirmation = subs.signup_request(session, email, name)
        mail = _confirmation_for(subscriber, already=not needs_confirmation)
        if not subs.may_mail(subscriber):  # complained or bounced: built the same, never sent
            mail = dataclasses.replace(mail, silent=True)
    # Queued the same way for every address: a confirmation, or "already subscribed".
    state.mailer.submit(mail)
    return origins.reply(_page("check_inbox.html"), "check_inbox")


def _confirm_id(token: str) -> int | tuple[str, int]:
    """The subscriber id a confirm token carries, or the expired/replaced-link page."""
    try:
        subscriber_id, epoch = _ctx().tokens.read_confirm_epoch(token)
    except ExpiredToken as exc:
        return _expired(exc.subscriber_id, token)
    except InvalidToken:
        abort(400)
    return _replaced(subscriber_id, epoch) or subscriber_id


def _replaced(subscriber_id: int, epoch: int) -> tuple[str, int] | None:
    """The "replaced" page for a link from an earlier epoch (issue 16, finding 6)."""
    with _ctx().db.read() as session:
        subscriber = session.get(Subscriber, subscriber_id)
        if subscriber is None or subs.current_epoch(subscriber, epoch):
            return None
    return _page("replaced.html", 410)


@blueprint.get("/confirm/<token>")
def confirm_page(token: str) -> tuple[str, int]:
    token = _checked_token(token)
    subscriber_id = _confirm_id(token)
    if not isinstance(subscriber_id, int):
        return subscriber_id
    with _ctx().db.read() as session:
        subscriber = session.get(Subscriber, subscriber_id)
        if subscriber is None:
            abort(404)
        if subscriber.status == SubscriberStatus.ACTIVE:
            return _page("confirmed.html")
    # One button, pressed by a person: a link scanner's browser opening it confirms nobody.
    return _page("confirm.html", token=token)


@blueprint.post("/confirm/<token>")
def confirm(token: str) -> tuple[str, int]:
    token = _checked_token(token)
    subscriber_id = _confirm_id(token)
    if not isinstance(subscriber_id, int):
        return subscriber_id
    state = _state()
    with state.write() as session:
        before = session.scalar(select(Subscriber.status).where(Subscriber.id == subscriber_id))
        subscriber = subs.confirm(session, subscriber_id, _client_ip())
        if subscriber is None:
            abort(404)
        confirmed = subscriber.status == SubscriberStatus.ACTIVE
        welcome = None
        if confirmed and before != SubscriberStatus.ACTIVE:  # this click did it: welcome once
            welcome = welcome_for(session, subscriber, before == SubscriberStatus.UNSUBSCRIBED)
    if welcome is not None:
        state.mailer.submit(welcome)
    if confirmed:
        return _page("confirmed.html")
    # A link from before the person unsubscribed: it no longer applies.
    return _page("expired.html", token=token, known=False)


def _expired(subscriber_id: int | None, token: str) -> tuple[str, int]:
    if subscriber_id is None:
        abort(400)
    with _ctx().db.read() as session:
        subscriber = session.get(Subscriber, subscriber_id)
        if subscriber is not None and subscriber.status == SubscriberStatus.ACTIVE:
            return _page("confirmed.html")
        known = _can_resend(subscriber)
    return _page("expired.html", token=token, known=known)


@blueprint.post("/confirm/<token>/resend")
def resend(token: str) -> tuple[str, int]:
    state = _state()
    token = _checked_token(token)
    if not csrf_valid():
        abort(400)
    try:
        subscriber_id: int | None = state.ctx.tokens.read_confirm(token)
    except ExpiredToken as exc:  # genuine signature, only too old: the normal case
        subscriber_id = exc.subscriber_id
    except InvalidToken:
        abort(400)
    if not state.limits.per_ip.hit(ip_key(_client_ip())):
        return error_page(429)
    with state.write() as session:
        subscriber = session.get(Subscriber, subscriber_id)
        if subscriber is not None and subscriber.status == SubscriberStatus.ACTIVE:
            return _page("confirmed.html")
        if subscriber is None or not _can_resend(subscriber):
            # Purged, or left since: a fresh signup is the way back in.
            return _page("expired.html", token=token, known=False)
        if not state.limits.per_address.hit(address_key(subscriber.email), session):
            return error_page(429)
        again = subs.request_subscription(session, subscriber.email, subscriber.name)
        mail = _confirmation_for(again)
    if mail is not None:
        state.mailer.submit(mail)
    return _page("check_inbox.html")


@blueprint.get("/unsubscribe/<token>")
def unsubscribe_page(token: str) -> tuple[str, int]:
    ctx = _ctx()
    token = _checked_token(token)
    subscriber_id = _unsubscribe_id(ctx, token)
    with ctx.db.read() as session:
        subscriber = session.get(Subscriber, subscriber_id)
        if subscriber is None:
            abort(404)
        done = subscriber.status == SubscriberStatus.UNSUBSCRIBED
    return _page("unsubscribe.html", token=token, already=done)


@blueprint.post("/unsubscribe/<token>")
def unsubscribe(token: str) -> tuple[str, int]:
    # RFC 8058: no cookie, no CSRF token, any body; 200 every time, never a redirect.
    token = _checked_token(token)
    subscriber_id = _unsubscribe_id(_ctx(), token)
    with _state().write() as session:
        subscriber = subs.unsubscribe(session, subscriber_id)
        if subscriber is None:
            abort(404)
    return _page("unsubscribed.html")


@blueprint.get("/archive")
def archive() -> tuple[str, int]:
    with _ctx().db.read() as session:
        rows = session.execute(
            select(Issue.id, Issue.subject, Issue.finished_at, Issue.created_at)
            .where(Issue.status == IssueStatus.SENT)
            .order_by(Issue.id.desc())
            .limit(500)
        ).all()
    issues = [
        {"id": r.id, "subject": r.subject, "date": (r.finished_at or r.created_at).date()}
        for r in rows
    ]
    return _page("archive.html", issues=issues)


@blueprint.get("/archive/<int:issue_id>")
def archive_issue(issue_id: int) -> tuple[str, int]:
    from ..mail.render import long_date, web_body

    ctx = _ctx()
    if issue_id > MAX_ISSUE_ID:
        abort(404)
    with ctx.db.read() as session:
        issue = session.get(Issue, issue_id)
        if issue is None or issue.status != IssueStatus.SENT:
            abort(404)
        # The frozen bytes without the email-only parts, inside the site's own page.
        styles, body = web_body(issue.html, base_url=ctx.settings.base_url, issue_id=issue.id)
        day = issue.digest_date or (issue.finished_at or issue.created_at).date()
        subject = issue.subject
    guard.archive_page()
    return _page(
        "issue.html", subject=subject, date_long=long_date(day), issue_styles=styles, body=body
    )


@blueprint.get("/healthz")
def healthz() -> tuple[str, int, dict[str, str]]:
    """ok when the database answers *and accepts a write* (a one-row heartbeat).

    A full disk or a read-only file still answers SELECT 1, while every signup,
    confirmation and send fails: the balancer must hear about it, and why.
    """
    from ..db import error_reason, heartbeat

    plain = {"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"}
    try:
        with _state().write() as session:
            heartbeat(session)
    except Exception as exc:
        log.exception("health check: the database does not accept writes")
        return f"database unavailable: cannot write ({error_reason(exc)})\n", 503, plain
    return "ok\n", 200, plain


def _can_resend(subscriber: Subscriber | None) -> bool:
    """A new confirmation link makes sense: pending, or re-requested after leaving."""
    if subscriber is None:
        return False
    if subscriber.status == SubscriberStatus.PENDING:
        return True
    return subscriber.confirm_sent_at is not None and subscriber.status != SubscriberStatus.ACTIVE


def _unsubscribe_id(ctx: Context, token: str) -> int:
    try:
        return ctx.tokens.read_unsubscribe(token)
    except InvalidToken:
        abort(400)
