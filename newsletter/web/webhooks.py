"""The ``webhooks`` blueprint: POST /webhooks/ses | mailgun | postmark | sendgrid.

Each route is 404 until its provider's secret setting is set, so an unconfigured
deployment exposes nothing.  A bad signature is 403 and changes nothing; a
signed but malformed body is 400.  These routes (and only these) accept bodies
up to :data:`MAX_BODY` (a SendGrid batch is far larger than a signup form).
Each event is applied in its own transaction and recorded once, so a provider
retrying a delivery changes nothing the second time.

The app factory registers :data:`blueprint`; the routes find the app's Context
in ``app.extensions["newsletter"]`` (the WebState the factory stores there).
Tests may put a certificate fetcher in ``app.extensions["newsletter.sns_fetch"]``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from flask import Blueprint, abort, current_app, request
from sqlalchemy.orm import Session

from ..bounces import webhooks
from ..bounces.apply import record
from ..bounces.scan import matcher_for

__all__ = ["MAX_BODY", "blueprint"]

log = logging.getLogger(__name__)
MAX_BODY = 5 * 1024 * 1024

blueprint = Blueprint("webhooks", __name__, url_prefix="/webhooks")


@blueprint.before_request
def _bigger_bodies() -> None:
    request.max_content_length = MAX_BODY


def _state() -> Any:
    return current_app.extensions["newsletter"]


def _apply(provider: str, events: list[webhooks.Event]) -> tuple[str, int]:
    state = _state()
    ctx = state.ctx
    matcher = matcher_for(ctx)
    write: Callable[[], AbstractContextManager[Session]] = getattr(state, "write", ctx.db.write)
    for event in events:
        with write() as session:
            record(
                session,
                source=provider,
                key=event.key,
                findings=[event.finding],
                matcher=matcher,
                settings=ctx.settings,
                trust_address=True,  # the provider signed it
            )
    return f"ok: {len(events)} event(s)\n", 200


def _verified(run: Callable[[], list[webhooks.Event]]) -> list[webhooks.Event]:
    try:
        return run()
    except webhooks.BadSignature as exc:
        log.warning("webhook refused (%s): %s", request.path, exc)
        abort(403)
    except webhooks.BadPayload:
        abort(400)


@blueprint.post("/mailgun")
def mailgun() -> tuple[str, int]:
    key = _state().ctx.settings.mailgun_signing_key
    if not key:
        abort(404)
    body = request.get_data(cache=False)
    return _apply("mailgun", _verified(lambda: webhooks.mailgun(body, key)))


@blueprint.post("/postmark")
@blueprint.post("/postmark/<token>")
def postmark(token: str | None = None) -> tuple[str, int]:
    expected = _state().ctx.settings.postmark_webhook_token
    if not expected:
        abort(404)
    auth = request.authorization
    given = token or request.args.get("token") or (auth.password if auth else None)
    if not webhooks.postmark_token_ok(expected, given):
        abort(403)
    body = request.get_data(cache=False)
    return _apply("postmark", _verified(lambda: webhooks.postmark(body)))


@blueprint.post("/sendgrid")
def sendgrid() -> tuple[str, int]:
    key = _state().ctx.settings.sendgrid_public_key
    if not key:
        abort(404)
    body = request.get_data(cache=False)
    signature = request.headers.get("X-Twilio-Email-Event-Webhook-Signature")
    timestamp = request.headers.get("X-Twilio-Email-Event-Webhook-Timestamp")
    return _apply("sendgrid", _verified(lambda: webhooks.sendgrid(body, signature, timestamp, key)))


def _sns() -> webhooks.SnsVerifier:
    extensions = current_app.extensions
    verifier = extensions.get("newsletter.sns")
    if verifier is None:
        topics = _state().ctx.settings.ses_topic_arns
        verifier = webhooks.SnsVerifier(topics, fetch=extensions.get("newsletter.sns_fetch"))
        extensions["newsletter.sns"] = verifier  # keeps the certificate cache
    assert isinstance(verifier, webhooks.SnsVerifier)
    return verifier


@blueprint.post("/ses")
def ses() -> tuple[str, int]:
    if not _state().ctx.settings.ses_topic_arns:
        abort(404)
    body = request.get_data(cache=False)
    result: list[webhooks.SnsResult] = []

    def run() -> list[webhooks.Event]:
        result.append(_sns().handle(body))
        return result[0].events

    events = _verified(run)
    url = result[0].subscribe_url
    if url is not None:
        _confirm_subscription(url)
        return "subscription confirmed\n", 200
    return _apply("ses", events)


def _confirm_subscription(url: str) -> None:
    """Visit SNS's SubscribeURL (already checked to be on sns.<region>.amazonaws.com)."""
    fetch = current_app.extensions.get("newsletter.sns_fetch") or webhooks.fetch_https
    try:
        fetch(url)
    except OSError as exc:
        log.warning("could not confirm the SNS subscription: %s", exc)
        abort(502)
