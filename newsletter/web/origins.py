"""The footer form: who may post ``/subscribe`` from another origin, and how it is answered.

DESIGN.md: "POST /subscribe from a page on an origin in NEWSLETTER_ALLOWED_ORIGINS
needs no token of ours: the Origin check plus double opt-in protect it.  Any other
cross-origin POST is refused."  The rules, in the order they are applied:

* The request's origin is its ``Origin`` header, else the origin of its ``Referer``
  (older browsers and some privacy settings send no Origin on a plain form post).
* Our own origin (``NEWSLETTER_BASE_URL``'s, or the Host the request came to) is
  *same-origin*: today's CSRF token is still required.
* An origin in NEWSLETTER_ALLOWED_ORIGINS is *allowed*: no cookie, no token.
* Anything else is *refused* with 403 before the route runs, so nothing is sent:
  another origin, ``Origin: null`` (sandboxed frames, ``file:`` pages), and a request
  with neither header that still looks cross-origin (``Sec-Fetch-Site`` says so, or
  it is JSON, which only a script sends).
* CORS is answered for allowed origins only: the preflight ``OPTIONS``,
  ``Access-Control-Allow-Origin`` set to that one origin (never ``*``, never with
  credentials), and ``Vary: Origin`` on every ``/subscribe`` answer so that a cache
  never hands one origin's answer to another.
* The answer is the same page whatever the address (the route's rule); a
  ``next`` field on an allowed origin turns the success page into a 303 back to
  the site, and a JSON request gets the same outcome as JSON.

Rate limits, the honeypot and the known/unknown answer stay in the route, so
they apply to every path alike.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, redirect, request
from werkzeug.datastructures import MultiDict

from ..config import Settings, origin_of

log = logging.getLogger("newsletter.web")

SUBSCRIBE_PATH = "/subscribe"
NEXT_FIELD = "next"
_NEXT_MAX = 2048
_PREFLIGHT_HEADERS = frozenset({"content-type", "accept"})
_MESSAGES = {
    "check_inbox": "Check your inbox: if that address can be subscribed, a confirmation "
    "link is on its way.",
    "email": "Please enter a valid email address.",
    "csrf": "Your form had expired. Please submit it again.",
    "refused": "This request was refused.",
    "rate_limited": "Too many attempts. Please wait a while and try again.",
}


class Source(enum.Enum):
    """Where a POST to ``/subscribe`` comes from, as far as the rules care."""

    SAME = "same-origin"
    ALLOWED = "allowed origin"
    REFUSED = "refused"


def _settings() -> Settings:
    settings: Settings = current_app.extensions["newsletter"].ctx.settings
    return settings


def request_origin() -> str | None:
    """The Origin header, else the Referer's origin; ``"null"`` when unusable."""
    origin = request.headers.get("Origin", "").strip()
    if origin:
        return origin_of(origin) if origin.lower() != "null" else "null"
    referer = request.headers.get("Referer", "").strip()
    if referer:
        return origin_of(referer) or "null"
    return None


def own_origins(settings: Settings) -> set[str]:
    """Our origins: the public base URL's and the one this request was addressed to."""
    own = {origin_of(settings.base_url), origin_of(request.host_url)}
    return {o for o in own if o}


def wants_json() -> bool:
    """A script's request: JSON posted, or JSON preferred over HTML in Accept."""
    if request.is_json:
        return True
    accept = request.accept_mimetypes
    return accept["application/json"] > accept["text/html"]


def classify(settings: Settings) -> Source:
    """The :class:`Source` of the current request (see the module docstring)."""
    origin = request_origin()
    if origin is None:
        fetch_site = request.headers.get("Sec-Fetch-Site", "").lower()
        if fetch_site in ("cross-site", "same-site") or wants_json():
            return Source.REFUSED
        return Source.SAME
    if origin in own_origins(settings):
        return Source.SAME
    if origin in settings.allowed_origins:
        return Source.ALLOWED
    return Source.REFUSED


def source() -> Source:
    """The current request's source (computed once, by the before-request hook)."""
    found = g.get("subscribe_source")
    if found is None:
        found = g.subscribe_source = classify(_settings())
    assert isinstance(found, Source)
    return found


def posted_fields() -> Mapping[str, str]:
    """The posted fields, from a form or a JSON object (strings only; others dropped)."""
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return {}
        return {str(k): v for k, v in body.items() if isinstance(v, str)}
    form: MultiDict[str, str] = request.form
    return form


def next_url(settings: Settings) -> str | None:
    """The form's ``next`` URL when it is on an allowed (or our own) origin, else None."""
    if wants_json():
        return None
    value = request.form.get(NEXT_FIELD, "").strip()
    if not value or len(value) > _NEXT_MAX or any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        return None
    origin = origin_of(value)
    if origin is None or origin not in {*settings.allowed_origins, *own_origins(settings)}:
        if value:
            log.info("subscribe: ignored a next URL on an origin that is not allowed")
        return None
    return value


def reply(page: tuple[str, int], outcome: str, reason: str | None = None) -> Any:
    """The route's answer for ``outcome``: the page, a 303 to ``next``, or JSON.

    The page is always rendered first, so every path does the same work.
    """
    status = page[1]
    if wants_json():
        message = _MESSAGES.get(outcome, "")
        if reason:
            message = f"{message} {reason}".strip()
        answer = jsonify({"ok": status < 400, "status": outcome, "message": message})
        answer.status_code = status
        return answer
    if status < 400 and source() is Source.ALLOWED:
        target = next_url(_settings())
        if target is not None:
            return redirect(target, code=303)
    return page


# --------------------------------------------------------------------------- hooks


def _before() -> Any:
    if request.path != SUBSCRIBE_PATH:
        return None
    settings = _settings()
    if request.method == "OPTIONS":
        return _preflight(settings)
    if request.method != "POST":
        return None
    found = source()
    if found is Source.REFUSED:
        log.info("subscribe: refused a cross-origin POST from %r", request_origin())
        from .guard import error_page

        return reply(error_page(403), "refused")
    return None


def _preflight(settings: Settings) -> Response:
    origin = request.headers.get("Origin", "").strip()
    method = request.headers.get("Access-Control-Request-Method", "").upper()
    asked = {
        h.strip().lower()
        for h in request.headers.get("Access-Control-Request-Headers", "").split(",")
        if h.strip()
    }
    response = Response(status=204)
    if origin_of(origin) not in settings.allowed_origins or method != "POST":
        response.status_code = 403
        return response
    if not asked <= _PREFLIGHT_HEADERS:
        response.status_code = 403
        return response
    response.headers["Access-Control-Allow-Methods"] = "POST"
    response.headers["Access-Control-Allow-Headers"] = "Content-Type, Accept"
    response.headers["Access-Control-Max-Age"] = "600"
    g.cors_origin = origin_of(origin)
    return response


def _after(response: Response) -> Response:
    if request.path != SUBSCRIBE_PATH:
        return response
    response.vary.add("Origin")
    origin = g.get("cors_origin")
    header_origin = origin_of(request.headers.get("Origin", "").strip())
    if origin is None and g.get("subscribe_source") is Source.ALLOWED and header_origin:
        origin = header_origin
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
    return response


def install(app: Flask) -> None:
    """Wire the Origin/CORS rules for ``/subscribe`` into ``app``."""
    app.before_request(_before)
    app.after_request(_after)
