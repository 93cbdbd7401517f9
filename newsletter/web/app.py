"""The public web app: subscribe, confirm, unsubscribe, archive, health.

Routes (DESIGN.md "Web"), and the rules they keep:

* State changes only on POST.  ``GET /confirm/<token>`` and ``GET /unsubscribe/<token>``
  each show one button and submit nothing by themselves: the mail-security scanners
  that open links in a sandboxed browser (Safe Links, Proofpoint, Mimecast) run
  scripts, so only a person's click may confirm or unsubscribe anyone.
* ``POST /unsubscribe/<token>`` is also the RFC 8058 one-click target: mailbox
  providers POST ``List-Unsubscribe=One-Click`` with no cookie and no CSRF token,
  and expect a 200 (never a redirect) however often they retry.
* The subscribe answer is identical for new, pending and active addresses, and the
  confirmation email is sent off the request thread (``confirmations``), so neither the
  page nor its timing tells a prober who is on the list.
* No redirects at all, so there is nothing to turn into an open redirect (Werkzeug's
  slash-merging and trailing-slash redirects are off: an unknown path is a 404).
* The client IP is the WSGI ``REMOTE_ADDR``; ``serve(trusted_proxy=...)`` lets
  waitress rewrite it from X-Forwarded-For only for a named proxy.
* Subscribe attempts are limited per client IP, an IPv6 client per /64
  (``NEWSLETTER_WEB_RATE_IP``, default 20 per 10 minutes), and per target address,
  ``+tag`` ignored (``NEWSLETTER_WEB_RATE_ADDRESS``, default 3 per hour, so nobody
  can mail-bomb an address through us); see ``guard`` for why the counters live
  in the process.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask
from sqlalchemy.orm import Session

from ..context import Context
from . import guard, origins, preferences, public, webhooks
from .admin.base import shutdown_sends
from .admin.views import admin_blueprint
from .confirmations import ConfirmationMailer
from .guard import Limits
from .public import HONEYPOT_FIELD

log = logging.getLogger("newsletter.web")

FORM_MAX_BODY = 64 * 1024  # every form and JSON post of ours is far smaller
WEBHOOK_MAX_BODY = webhooks.MAX_BODY  # provider event batches: the webhooks set it per request


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
        MAX_CONTENT_LENGTH=FORM_MAX_BODY,
        PROPAGATE_EXCEPTIONS=False,
        TRAP_HTTP_EXCEPTIONS=False,
        TEMPLATES_AUTO_RELOAD=False,
    )
    # No slash-merging or trailing-slash redirects: Werkzeug builds their Location
    # from the Host header (``GET //unsubscribe//x`` with ``Host: evil.example``
    # answered 308 to http://evil.example/...).  Set before any rule is added.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    state = WebState(ctx)
    app.extensions["newsletter"] = state
    guard.install(app)
    origins.install(app)
    app.jinja_env.globals.update(
        language=ctx.settings.language,
        site_name=ctx.settings.site_name,
        postal_address=ctx.settings.postal_address,
        honeypot_field=HONEYPOT_FIELD,
    )
    app.register_blueprint(public.blueprint)
    app.register_blueprint(preferences.blueprint)
    app.register_blueprint(webhooks.blueprint)
    app.register_blueprint(admin_blueprint())
    return app


def waitress_options(
    host: str, port: int, threads: int, trusted_proxy: str | None = None
) -> dict[str, Any]:
    """waitress's settings: bodies, idle connections and threads bounded (issue 16).

    * ``max_request_body_size``: waitress buffers a whole body before the app sees
      it, so its own limit is what refuses a huge upload *from its headers*; it is
      the webhook limit (the largest any route takes), and Flask's 64 KiB
      ``MAX_CONTENT_LENGTH`` refuses a larger form body before parsing it.
    * ``channel_timeout``/``cleanup_interval``: an idle or half-open connection is
      closed after 30 s instead of 120 s; ``connection_limit`` 1000 (not 100), so a
      hundred idle sockets cannot lock out ``/healthz`` and real readers.
    * ``max_request_header_size`` 64 KiB (not 256 KiB): nothing here needs more.
    """
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "threads": max(threads, 1),
        "ident": "newsletter",
        "clear_untrusted_proxy_headers": True,
        "max_request_body_size": WEBHOOK_MAX_BODY,
        "max_request_header_size": 64 * 1024,
        "channel_timeout": 30,
        "cleanup_interval": 10,
        "connection_limit": 1000,
    }
    if trusted_proxy:
        options.update(trusted_proxy=trusted_proxy, trusted_proxy_headers={"x-forwarded-for"})
    return options


def web_state(app: Flask) -> WebState:
    state = app.extensions["newsletter"]
    assert isinstance(state, WebState)
    return state


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

    options = waitress_options(host, port, threads, trusted_proxy)
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
        shutdown_sends(app)
        web_state(app).mailer.close()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)
