"""The public web app: subscribe, confirm, unsubscribe, archive, health.

Routes (DESIGN.md "Web"), and the rules they keep:

* State changes only on POST.  ``GET /confirm/<token>`` renders a form that submits
  itself with one line of JS, so a person needs no extra click but a link scanner's
  bare GET changes nothing; ``GET /unsubscribe/<token>`` shows one button and does
  *not* submit itself, because a scanner must never unsubscribe anyone.
* ``POST /unsubscribe/<token>`` is also the RFC 8058 one-click target: mailbox
  providers POST ``List-Unsubscribe=One-Click`` with no cookie and no CSRF token,
  and expect a 200 (never a redirect) however often they retry.
* The subscribe answer is identical for new, pending and active addresses, and the
  confirmation email is sent off the request thread (``webmail``), so neither the
  page nor its timing tells a prober who is on the list.
* No redirects at all, so there is nothing to turn into an open redirect.
* The client IP is the WSGI ``REMOTE_ADDR``; ``serve(trusted_proxy=...)`` lets
  waitress rewrite it from X-Forwarded-For only for a named proxy.
* Subscribe attempts are limited per client IP, an IPv6 client per /64
  (``NEWSLETTER_WEB_RATE_IP``, default 20 per 10 minutes), and per target address,
  ``+tag`` ignored (``NEWSLETTER_WEB_RATE_ADDRESS``, default 3 per hour, so nobody
  can mail-bomb an address through us); see ``webguard`` for why the counters live
  in the process.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask, Response, abort, render_template, request
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from . import headers, webguard
from .context import Context
from .models import Issue, IssueStatus, Subscriber, SubscriberStatus
from .tokens import ExpiredToken, InvalidToken
from .webguard import Limits, address_key, csrf_valid, error_page, ip_key, no_referrer
from .webmail import Confirmation, ConfirmationMailer

log = logging.getLogger("newsletter.web")

HONEYPOT_FIELD = "website"
MAX_TOKEN_LENGTH = 512
MAX_ISSUE_ID = 2**63 - 1  # SQLite's INTEGER; a larger id is simply not there
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_.\-]+")


class WebState:
    """What the routes share: the Context, the limiters and the confirmation mailer."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.limits = Limits.from_settings(ctx.settings, ctx.db)
        self.mailer = ConfirmationMailer(ctx)
        self._write_lock = threading.Lock()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction, one request thread at a time.

        SQLite allows one writer; threads of this process that collide would wait in
        SQLite's busy handler, which sleeps and polls (up to 100 ms a nap) and makes
        the latency tail long.  Queueing on a Python lock first hands the write
        lock over the moment it is free; only another process (a sender) still
        meets the busy timeout.  Writes here are single-row and short.
        """
        with self._write_lock, self.ctx.db.write() as session:
            yield session


def create_app(ctx: Context | None = None) -> Flask:
    """Build the Flask app for ``ctx`` (opened from the environment when omitted)."""
    ctx = ctx if ctx is not None else Context.open()
    app = Flask(
        "newsletter",
        template_folder=str(ctx.templates_dir),
        static_folder=None,
    )
    app.config.update(
        SECRET_KEY=ctx.secret_key,
        SESSION_COOKIE_NAME="newsletter_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=ctx.settings.base_url.startswith("https://"),
        MAX_CONTENT_LENGTH=64 * 1024,
        PROPAGATE_EXCEPTIONS=False,
        TRAP_HTTP_EXCEPTIONS=False,
        TEMPLATES_AUTO_RELOAD=False,
    )
    state = WebState(ctx)
    app.extensions["newsletter"] = state
    webguard.install(app)
    app.jinja_env.globals.update(
        site_name=ctx.settings.site_name,
        postal_address=ctx.settings.postal_address,
        honeypot_field=HONEYPOT_FIELD,
    )
    _routes(app, state)
    return app


def web_state(app: Flask) -> WebState:
    state = app.extensions["newsletter"]
    assert isinstance(state, WebState)
    return state


def _client_ip() -> str:
    return request.remote_addr or "unknown"


def _checked_token(token: str) -> str:
    """Reject absurd tokens before any crypto; the token page must not be cached or leaked."""
    no_referrer()
    if len(token) > MAX_TOKEN_LENGTH or not _TOKEN_CHARS.fullmatch(token):
        abort(400)
    return token


def _routes(app: Flask, state: WebState) -> None:
    ctx = state.ctx
    from . import subscribers as subs

    def page(template: str, status: int = 200, **values: Any) -> tuple[str, int]:
        return render_template(f"web/{template}", **values), status

    def confirmation_for(subscriber: Subscriber | None) -> Confirmation | None:
        """The email to queue once the transaction has committed (never before)."""
        if subscriber is None:
            return None
        url = f"{ctx.settings.base_url}/confirm/{ctx.tokens.confirm(subscriber.id)}"
        return Confirmation(subscriber.id, subscriber.email, subscriber.name, url)

    @app.get("/")
    @app.get("/subscribe")
    def subscribe_form() -> tuple[str, int]:
        return page("subscribe.html", email="", name="", error=None, reason=None)

    @app.post("/subscribe")
    def subscribe() -> tuple[str, int]:
        if not csrf_valid():
            return page("subscribe.html", 400, email="", name="", error="csrf", reason=None)
        if not state.limits.per_ip.hit(ip_key(_client_ip())):
            return error_page(429)
        if request.form.get(HONEYPOT_FIELD, "").strip():
            # A bot filled the invisible field: look successful, do nothing.
            log.info("honeypot filled from %s", _client_ip())
            return page("check_inbox.html")
        raw_email = request.form.get("email", "")[:512]
        raw_name = request.form.get("name", "")[:512]
        try:
            email = headers.addr_spec(subs.normalise_email(raw_email))
        except subs.InvalidEmail as exc:
            return page(
                "subscribe.html", 400, email=raw_email, name=raw_name, error="email",
                reason=exc.reason,
            )  # fmt: skip
        except ValueError:  # valid, but unsafe in a header (an encoded word, ...)
            return page(
                "subscribe.html", 400, email=raw_email, name=raw_name, error="email",
                reason="This address cannot be used.",
            )  # fmt: skip
        if not state.limits.per_address.hit(address_key(email)):
            return error_page(429)
        name = subs.clean_name(raw_name)
        with state.write() as session:
            mail = confirmation_for(subs.request_subscription(session, email, name))
        if mail is not None:
            state.mailer.submit(mail)
        return page("check_inbox.html")

    def confirm_id(token: str) -> int | tuple[str, int]:
        """The subscriber id a confirm token carries, or the expired-link page."""
        try:
            return ctx.tokens.read_confirm(token)
        except ExpiredToken as exc:
            return expired(exc.subscriber_id, token)
        except InvalidToken:
            abort(400)

    @app.get("/confirm/<token>")
    def confirm_page(token: str) -> tuple[str, int]:
        token = _checked_token(token)
        subscriber_id = confirm_id(token)
        if not isinstance(subscriber_id, int):
            return subscriber_id
        with ctx.db.read() as session:
            subscriber = session.get(Subscriber, subscriber_id)
            if subscriber is None:
                abort(404)
            if subscriber.status == SubscriberStatus.ACTIVE:
                return page("confirmed.html")
        webguard.allow_script()
        return page("confirm.html", token=token)

    @app.post("/confirm/<token>")
    def confirm(token: str) -> tuple[str, int]:
        token = _checked_token(token)
        subscriber_id = confirm_id(token)
        if not isinstance(subscriber_id, int):
            return subscriber_id
        with state.write() as session:
            subscriber = subs.confirm(session, subscriber_id, _client_ip())
            if subscriber is None:
                abort(404)
            confirmed = subscriber.status == SubscriberStatus.ACTIVE
        if confirmed:
            return page("confirmed.html")
        # A link from before the person unsubscribed: it no longer applies.
        return page("expired.html", token=token, known=False)

    def expired(subscriber_id: int | None, token: str) -> tuple[str, int]:
        if subscriber_id is None:
            abort(400)
        with ctx.db.read() as session:
            subscriber = session.get(Subscriber, subscriber_id)
            if subscriber is not None and subscriber.status == SubscriberStatus.ACTIVE:
                return page("confirmed.html")
            known = _can_resend(subscriber)
        return page("expired.html", token=token, known=known)

    @app.post("/confirm/<token>/resend")
    def resend(token: str) -> tuple[str, int]:
        token = _checked_token(token)
        if not csrf_valid():
            abort(400)
        try:
            subscriber_id: int | None = ctx.tokens.read_confirm(token)
        except ExpiredToken as exc:  # genuine signature, only too old: the normal case
            subscriber_id = exc.subscriber_id
        except InvalidToken:
            abort(400)
        if not state.limits.per_ip.hit(ip_key(_client_ip())):
            return error_page(429)
        with state.write() as session:
            subscriber = session.get(Subscriber, subscriber_id)
            if subscriber is not None and subscriber.status == SubscriberStatus.ACTIVE:
                return page("confirmed.html")
            if subscriber is None or not _can_resend(subscriber):
                # Purged, or left since: a fresh signup is the way back in.
                return page("expired.html", token=token, known=False)
            if not state.limits.per_address.hit(address_key(subscriber.email), session):
                return error_page(429)
            again = subs.request_subscription(session, subscriber.email, subscriber.name)
            mail = confirmation_for(again)
        if mail is not None:
            state.mailer.submit(mail)
        return page("check_inbox.html")

    @app.get("/unsubscribe/<token>")
    def unsubscribe_page(token: str) -> tuple[str, int]:
        token = _checked_token(token)
        subscriber_id = _unsubscribe_id(ctx, token)
        with ctx.db.read() as session:
            subscriber = session.get(Subscriber, subscriber_id)
            if subscriber is None:
                abort(404)
            done = subscriber.status == SubscriberStatus.UNSUBSCRIBED
        return page("unsubscribe.html", token=token, already=done)

    @app.post("/unsubscribe/<token>")
    def unsubscribe(token: str) -> tuple[str, int]:
        # RFC 8058: no cookie, no CSRF token, any body; 200 every time, never a redirect.
        token = _checked_token(token)
        subscriber_id = _unsubscribe_id(ctx, token)
        with state.write() as session:
            subscriber = subs.unsubscribe(session, subscriber_id)
            if subscriber is None:
                abort(404)
        return page("unsubscribed.html")

    @app.get("/archive")
    def archive() -> tuple[str, int]:
        with ctx.db.read() as session:
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
        return page("archive.html", issues=issues)

    @app.get("/archive/<int:issue_id>")
    def archive_issue(issue_id: int) -> Response:
        from .render import public_copy

        if issue_id > MAX_ISSUE_ID:
            abort(404)
        with ctx.db.read() as session:
            issue = session.get(Issue, issue_id)
            if issue is None or issue.status != IssueStatus.SENT:
                abort(404)
            # The frozen bytes, with the per-reader placeholders made neutral.
            html = public_copy(issue.html, base_url=ctx.settings.base_url, issue_id=issue.id)
        webguard.archive_page()
        return Response(html, mimetype="text/html")

    @app.get("/healthz")
    def healthz() -> tuple[str, int, dict[str, str]]:
        plain = {"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"}
        try:
            with ctx.db.read() as session:
                session.execute(text("SELECT 1")).scalar_one()
        except Exception:
            log.exception("health check: database not answering")
            return "database unavailable\n", 503, plain
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


def serve(
    app: Flask,
    host: str = "127.0.0.1",
    port: int = 8000,
    threads: int = 8,
    trusted_proxy: str | None = None,
) -> None:
    """Run ``app`` on waitress (blocking) - never Flask's development server.

    With ``trusted_proxy`` set (the proxy's IP), waitress replaces REMOTE_ADDR with
    the X-Forwarded-For client for requests from that proxy only; without it the
    header is ignored, so clients cannot spoof their IP to dodge the rate limit.
    """
    import waitress

    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "threads": threads,
        "ident": "newsletter",
        "clear_untrusted_proxy_headers": True,
    }
    if trusted_proxy:
        options.update(trusted_proxy=trusted_proxy, trusted_proxy_headers={"x-forwarded-for"})
    installed = False
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ):
        # SIGTERM (systemd, docker stop) ends waitress's loop like Ctrl+C does, so
        # the confirmation emails still queued are sent before the process exits.
        # A caller with its own handler (``newsletter run``) keeps it.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        installed = True
    try:
        waitress.serve(app, **options)
    finally:
        if installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        web_state(app).mailer.close()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)
