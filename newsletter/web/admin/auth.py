"""Who may see the editor's desk: the session guard, login and logout.

* Every request to the blueprint passes :func:`guard` first.  Without a live
  session a page (GET) answers 303 to ``/admin/login``, and anything else (an
  action, a JSON endpoint, an asset) 401; only the login form itself is open.
* Every POST, the login form's included, must carry the session's CSRF token (403).
* The session is Flask's signed cookie (HttpOnly, SameSite=Lax, Secure when the
  base URL is https; set by the app factory).  It holds the editor's id, a
  fingerprint of their password hash (a password change or removal ends every
  other session at once) and the time of the last request: 12 hours idle ends it.
* Failed logins are throttled in the database (:mod:`.accounts`); a throttled
  login answers 429 with ``Retry-After``.  Logins and logouts are logged and
  recorded in ``login_events``.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import Response as FlaskResponse
from flask import flash, g, jsonify, redirect, request, session, url_for
from flask.blueprints import BlueprintSetupState
from werkzeug.wrappers import Response

from ...models import User
from ..guard import csrf_valid, error_page, ip_key
from .accounts import MAX_PASSWORD, attempt_login, fingerprint, record_logout
from .base import Editor, admin, client_ip, ctx, page, web

IDLE = timedelta(hours=12)
_KEY = "admin"
OPEN_ENDPOINTS = frozenset({"admin.login", "admin.login_post"})
# Endpoints a script calls: never redirected to a login page, always a status code.
API_ENDPOINTS = frozenset({"admin.issue_progress", "admin.asset"})
UPLOAD_LIMIT = 5 * 1024 * 1024  # a CSV import (~100,000 rows); the public pages keep 64 KiB


@admin.record_once
def _configure(state: BlueprintSetupState) -> None:
    # Permanent (max-age) cookies for the admin session; the idle check below is
    # the real expiry, this only keeps browsers from holding it past 12 hours.
    state.app.config["PERMANENT_SESSION_LIFETIME"] = IDLE


def _session_editor() -> Editor | None:
    data = session.get(_KEY)
    if not isinstance(data, dict):
        return None
    uid, fp, seen = data.get("uid"), data.get("fp"), data.get("seen")
    if not isinstance(uid, int) or not isinstance(fp, str) or not isinstance(seen, int | float):
        return None
    now = time.time()
    if now - seen > IDLE.total_seconds() or seen > now + 300:
        session.pop(_KEY, None)
        g.expired = True
        return None
    with ctx().db.read() as db:
        user = db.get(User, uid)
        if user is None or fingerprint(user) != fp:
            session.pop(_KEY, None)
            return None
        who = Editor(user.id, user.email)
    if now - seen > 60:  # refresh the idle clock (at most once a minute: fewer cookies)
        session[_KEY] = {**data, "seen": int(now)}
    return who


def _refuse(status: int) -> Any:
    if request.endpoint in API_ENDPOINTS:
        return jsonify(error="login required" if status == 401 else "forbidden"), status
    return error_page(status)


@admin.before_request
def guard() -> Any:
    """The one gate: session, then CSRF on every POST (see the module docstring)."""
    if request.endpoint == "admin.import_readers":
        request.max_content_length = UPLOAD_LIMIT
    unsafe = request.method not in ("GET", "HEAD", "OPTIONS")
    if request.endpoint in OPEN_ENDPOINTS:
        if unsafe and not csrf_valid():
            return page("login.html", 403, error="Your form had expired. Please log in again.")
        return None
    who = _session_editor()
    if who is None:
        if not unsafe and request.endpoint not in API_ENDPOINTS:
            expired = "1" if g.get("expired") else None
            target = url_for("admin.login", next=_safe_next(request.full_path), expired=expired)
            return redirect(target, code=303)
        return _refuse(401)
    if unsafe and not csrf_valid():
        return _refuse(403)
    g.editor = who
    return None


def _safe_next(target: str | None) -> str | None:
    """Only a path inside /admin/ on this site: never an open redirect."""
    if not target:
        return None
    target = target.rstrip("?")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or "\\" in target or not target.startswith("/admin/"):
        return None
    if target.startswith("/admin/login") or target.startswith("/admin/logout"):
        return None
    return target


@admin.get("/login")
def login() -> Any:
    if _session_editor() is not None:
        return redirect(url_for("admin.dashboard"), code=303)
    expired = "expired" in request.args or bool(g.get("expired"))
    return page("login.html", next=_safe_next(request.args.get("next")), expired=expired)


@admin.post("/login")
def login_post() -> Any:
    email = request.form.get("email", "")[:320]
    password = request.form.get("password", "")[: MAX_PASSWORD + 1]
    target = _safe_next(request.form.get("next"))
    with web().write() as db:
        result = attempt_login(db, email, password, _throttle_ip())
        user = result.user
        who = (user.id, fingerprint(user)) if user is not None else None
    if result.throttled:
        minutes = max(1, round((result.retry_after or 60) / 60))
        body, status = page(
            "login.html",
            429,
            email=email,
            next=target,
            error=f"Too many failed logins. Please wait about {minutes} minute(s) and try again.",
        )
        return FlaskResponse(body, status, {"Retry-After": str(result.retry_after)})
    if who is None:
        return page("login.html", 401, email=email, next=target, error="Wrong address or password.")
    session.clear()  # a fresh session (and CSRF token) for the logged-in editor
    session.permanent = True
    session[_KEY] = {"uid": who[0], "fp": who[1], "seen": int(time.time())}
    return redirect(target or url_for("admin.dashboard"), code=303)


def _throttle_ip() -> str:
    """The client's address as the throttle counts it: IPv4 as is, IPv6 by its /64
    (a host is handed a whole /64 and could rotate through it)."""
    return ip_key(client_ip()).removeprefix("ip:")


@admin.post("/logout")
def logout() -> Response:
    from .base import editor

    who = editor()
    with web().write() as db:
        user = db.get(User, who.id)
        if user is not None:
            record_logout(db, user, client_ip())
    session.clear()
    flash("You are logged out.", "ok")
    return redirect(url_for("admin.login"), code=303)
