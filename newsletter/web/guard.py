"""The web app's defences: CSRF tokens, rate limits, security headers, error pages.

Kept apart from the routes (``web.py``) so each piece can be read and tested on its
own, and so the routes read as the product behaviour rather than as plumbing.

* **CSRF**: a random token kept in Flask's signed session cookie and echoed in a
  hidden form field (synchroniser token).  Only the subscribe and "send me a new
  link" forms need it: confirm and unsubscribe are authorised by the signed token in
  their URL, and RFC 8058 one-click POSTs arrive with no cookie at all.
* **Rate limits**: per client IP and per target address, counted in the database
  (``throttles``: one row per key and window, bumped by one atomic upsert), so any
  number of ``newsletter serve`` processes behind one proxy, on any machines, enforce
  one limit, with no Redis.  The only in-memory part is a fast path that is right
  across processes too: a key found full stays full until its window ends, so its
  further hits are refused without a round trip.  :class:`RateLimiter` (in-process
  sliding windows) remains for a single process's own use.
* **Headers**: a strict CSP with a per-response nonce (for the page's own style),
  ``nosniff``, no framing, and
  ``Referrer-Policy: no-referrer`` plus ``Cache-Control: no-store`` on pages whose
  URL holds a token, so the token never leaks to a third party or a shared cache.
* **Errors**: every error, including an unexpected exception, becomes a plain page
  with no detail; the traceback goes to the log only.
"""

from __future__ import annotations

import hmac
import ipaddress
import itertools
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from flask import Flask, Response, g, render_template, request, session
from sqlalchemy import Insert, case, delete, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException

from ..config import Settings, parse_limit
from ..models import Throttle

if TYPE_CHECKING:
    from ..db import Database

log = logging.getLogger("newsletter.web")

CSRF_FIELD = "csrf_token"
_CSRF_KEY = "csrf"

_ERROR_TEXT = {
    400: (
        "This link does not work",
        "The link is incomplete or was changed; links often get cut short when they are"
        " copied out of an email.",
    ),
    403: ("Forbidden", "This request was refused."),
    404: (
        "Not found",
        "There is nothing here: the page does not exist, or the subscription this link"
        " belonged to has been deleted.",
    ),
    405: ("Not allowed", "That method is not allowed here."),
    413: ("Too large", "That request is too large."),
    429: ("Too many requests", "Too many attempts. Please wait a while and try again."),
    500: ("Something went wrong", "Sorry, something went wrong on our side. Please try later."),
    503: ("Unavailable", "The service is unavailable right now. Please try later."),
}


# --------------------------------------------------------------------------- CSRF


def csrf_token() -> str:
    """The session's CSRF token, created on first use (templates call this)."""
    token = session.get(_CSRF_KEY)
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        session[_CSRF_KEY] = token
    return token


def csrf_valid() -> bool:
    """True when the posted form field matches the session's token (constant time)."""
    expected = session.get(_CSRF_KEY)
    given = request.form.get(CSRF_FIELD)
    # An empty ``expected`` needs no test of its own: an empty ``given`` is refused
    # here, and no non-empty ``given`` compares equal to it.
    if not isinstance(expected, str) or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


# --------------------------------------------------------------------------- rate limits


@dataclass
class RateLimiter:
    """At most ``limit`` hits per ``period`` seconds per key (sliding window, thread-safe).

    Memory is bounded: idle keys are pruned, and past ``max_keys`` the oldest keys
    are dropped (an attacker spraying keys can only make the limiter forget, which
    fails open for a moment rather than exhausting memory).
    """

    limit: int
    period: float
    max_keys: int = 100_000
    clock: Callable[[], float] = time.monotonic
    _hits: dict[str, deque[float]] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def hit(self, key: str, session: Session | None = None) -> bool:
        """Record one attempt for ``key``; False when it is over the limit (not recorded)."""
        now = self.clock()
        horizon = now - self.period
        with self._lock:
            window = self._hits.get(key)
            if window is None:
                if len(self._hits) >= self.max_keys:
                    self._prune(horizon)
                window = self._hits[key] = deque()
            while window and window[0] <= horizon:
                window.popleft()
            if len(window) >= self.limit:
                return False
            window.append(now)
            return True

    def _prune(self, horizon: float) -> None:
        for key in [k for k, w in self._hits.items() if not w or w[-1] <= horizon]:
            del self._hits[key]
        # Still full: drop the least recently used tenth in one go, so that a spray of
        # new keys pays for this scan and sort once per max_keys/10 keys, not on every
        # request while holding the lock every request needs.
        overflow = len(self._hits) - self.max_keys + max(self.max_keys // 10, 1)
        if overflow >= 1:
            oldest = sorted(self._hits, key=lambda k: self._hits[k][-1])[:overflow]
            for key in oldest:
                del self._hits[key]


@dataclass
class SharedLimiter:
    """At most ``limit`` hits per ``period`` seconds per key, for every process at once.

    Fixed windows that start at a key's first hit (so a burst right at a window's
    end and the next window's start can reach twice the limit: the price of one
    atomic statement per hit).  Refused hits are not counted.
    """

    db: Database
    name: str
    limit: int
    period: float
    clock: Callable[[], float] = time.time
    max_cached: int = 10_000
    _full_until: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _hits: Iterator[int] = field(default_factory=lambda: itertools.count(1), init=False, repr=False)

    def hit(self, key: str, session: Session | None = None) -> bool:
        """Count one attempt for ``key``; False when it is over the limit.

        ``session``: the caller's open write transaction, if any (on SQLite a second
        one from the same thread would wait for our own lock).
        """
        now = self.clock()
        row_key = f"{self.name}|{key}"[:400]
        with self._lock:
            if self._full_until.get(row_key, 0.0) > now:
                return False
            prune = next(self._hits) % 1000 == 0  # this process's every 1000th hit
        if session is not None:
            full_until = self._count(session, row_key, now, prune)
        else:
            with self.db.write() as own:
                full_until = self._count(own, row_key, now, prune)
        if full_until is None:
            return True
        with self._lock:
            if len(self._full_until) >= self.max_cached:
                self._full_until.clear()
            self._full_until[row_key] = full_until
        return False

    def _count(self, session: Session, key: str, now: float, prune: bool) -> float | None:
        """Count one hit: None when it is allowed, else when the key's full window ends."""
        t = Throttle.__table__.c
        statement = self._upsert(session.get_bind().dialect.name, key, now)
        full_until = None
        if session.execute(statement).scalar() is None:  # no row: not counted, full
            # The row is there: the upsert met it, and this transaction holds it (SQLite's
            # write lock; PostgreSQL locks a conflicting row even when it is not updated).
            start = session.execute(select(t.window_start).where(t.key == key)).scalar_one()
            full_until = float(start) + self.period
        if prune:  # old windows of this limiter: nobody needs them any more
            session.execute(
                delete(Throttle).where(
                    t.key.startswith(f"{self.name}|"),
                    t.window_start <= now - self.period,
                )
            )
        return full_until

    def _upsert(self, dialect: str, key: str, now: float) -> Insert:
        """One hit on ``key`` at ``now`` in one statement, in ``dialect``'s own upsert.

        It starts a window, counts a hit in one, or (the key full) changes nothing and
        returns no row.
        """
        t = Throttle.__table__.c
        expired = t.window_start <= now - self.period
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        return (
            insert(Throttle)
            .values(key=key, window_start=now, hits=1)
            .on_conflict_do_update(
                index_elements=[t.key],
                set_={
                    "window_start": case((expired, now), else_=t.window_start),
                    "hits": case((expired, 1), else_=t.hits + 1),
                },
                where=or_(expired, t.hits < self.limit),
            )
            .returning(t.hits)
        )


class Limiter(Protocol):
    def hit(self, key: str, session: Session | None = None) -> bool: ...


def ip_key(remote: str) -> str:
    """The per-client rate-limit key: the IPv4 address, or the IPv6 /64.

    An IPv6 host is normally handed a whole /64 and can pick any address in it,
    so counting single IPv6 addresses would limit nobody.
    """
    try:
        ip = ipaddress.ip_address(remote.partition("%")[0])
    except ValueError:
        return f"ip:{remote}"
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        if mapped is None:
            return f"ip:{ipaddress.IPv6Interface((ip, 64)).network}"
        ip = mapped
    return f"ip:{ip}"


def address_key(email: str) -> str:
    """The per-target rate-limit key: the canonical mailbox, so ``victim+1@``,
    ``victim+2@`` and, at Gmail, ``v.ictim@`` are one inbox with one limit."""
    from ..subscribers.addresses import canonical_mailbox

    return f"addr:{canonical_mailbox(email)}"


@dataclass(frozen=True)
class Limits:
    """The web app's limiters, configured from ``NEWSLETTER_WEB_RATE_*``."""

    per_ip: Limiter
    per_address: Limiter

    @classmethod
    def from_settings(cls, settings: Settings, db: Database | None = None) -> Limits:
        """NEWSLETTER_WEB_RATE_IP / _ADDRESS (``COUNT/PERIOD``, validated by config).

        With ``db`` (the web app) the counts are shared by every process using that
        database; without, they live in this process only.
        """
        ip = parse_limit(settings.web_rate_ip)
        address = parse_limit(settings.web_rate_address)
        if db is None:
            return cls(per_ip=RateLimiter(*ip), per_address=RateLimiter(*address))
        return cls(
            per_ip=SharedLimiter(db, "ip", *ip), per_address=SharedLimiter(db, "address", *address)
        )


# --------------------------------------------------------------------------- headers


def no_referrer() -> None:
    """Mark this response as a token page: no Referer, no caching."""
    g.token_page = True


def allow_script() -> None:
    """Allow this response's nonce-carrying inline script (no page uses one now)."""
    g.allow_script = True


def csp_nonce() -> str:
    """A fresh nonce per response for the page's own <style> (and <script>)."""
    nonce = g.get("csp_nonce")
    if nonce is None:
        nonce = g.csp_nonce = secrets.token_urlsafe(16)
    return str(nonce)


def archive_page() -> None:
    """Mark this response as a frozen issue: its inline style attributes need a looser CSP."""
    g.archive_page = True


def _security_headers(response: Response) -> Response:
    headers = response.headers
    override = g.get("csp")  # a blueprint's own policy (the admin pages, framed previews)
    if override:
        csp = override
    elif g.get("archive_page"):
        # The frozen email is inline-styled (premailer) and shows remote story images.
        csp = (
            "default-src 'none'; style-src 'unsafe-inline'; img-src https: http: data:; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
    else:
        nonce = csp_nonce()
        script = f"script-src 'nonce-{nonce}'; " if g.get("allow_script") else ""
        csp = (
            f"default-src 'none'; style-src 'nonce-{nonce}'; {script}img-src 'self' data:; "
            "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        )
    headers["Content-Security-Policy"] = csp
    headers["X-Content-Type-Options"] = "nosniff"
    headers["X-Frame-Options"] = g.get("frame_options", "DENY")
    headers["Cross-Origin-Opener-Policy"] = "same-origin"
    if g.get("token_page"):
        headers["Referrer-Policy"] = "no-referrer"
        headers["Cache-Control"] = "no-store"
    else:
        headers.setdefault("Referrer-Policy", "strict-origin-when-cross-origin")
        if request.method == "POST" or session.get(_CSRF_KEY):
            headers.setdefault("Cache-Control", "no-store")
    return response


# --------------------------------------------------------------------------- errors


# What the reader can do next, for the errors a reader can do something about.
_ERROR_TODO = {
    400: "Open the link again straight from the email, or copy all of it. To stop the emails,"
    " the Unsubscribe link in any other issue works too; to join, subscribe again below.",
    404: "To get the emails, subscribe again below; earlier issues are in the archive.",
    429: "",
}


def error_page(code: int) -> tuple[str, int]:
    """A plain page for ``code``; falls back to bare text if even the template fails.

    Each page says what happened and, where the reader can act, what to do next.
    """
    title, message = _ERROR_TEXT.get(code, _ERROR_TEXT[500])
    todo = _ERROR_TODO.get(code, "")
    try:
        page = render_template("web/error.html", code=code, title=title, message=message, todo=todo)
        return page, code
    except Exception:  # the error page must never itself raise
        log.exception("error template failed")
        return f"{code} {title}\n", code


def _handle_http(exc: HTTPException) -> tuple[str, int]:
    return error_page(exc.code or 500)


def _handle_exception(exc: Exception) -> tuple[str, int]:
    if isinstance(exc, HTTPException):
        return _handle_http(exc)
    log.exception("unhandled error on %s %s", request.method, request.path)
    return error_page(500)


def install(app: Flask) -> None:
    """Wire headers, error pages and template helpers into ``app``."""
    app.after_request(_security_headers)
    app.register_error_handler(HTTPException, _handle_http)
    app.register_error_handler(Exception, _handle_exception)
    app.jinja_env.globals.update(csrf_token=csrf_token, csp_nonce=csp_nonce, csrf_field=CSRF_FIELD)
