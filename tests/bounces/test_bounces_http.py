"""The webhooks blueprint through Flask's test client: 404 unset, 403 forged, 200 applied."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from _webhook_support import TOPIC, SendGridKeys, SnsSigner, cert_server, fixture, mailgun_body
from sqlalchemy import func, select

from newsletter import subscribers as subs
from newsletter.config import Settings
from newsletter.context import Context
from newsletter.models import BounceEvent, Subscriber, SubscriberStatus
from newsletter.web import create_app

KEY = "key-mailgun-signing-0123456789"
TOKEN = "postmark-webhook-token-abc"
ADDRESSES = ["alice@example.com", "john@example.com", "example@test.com", "jane@example.com"]
_SENDGRID = SendGridKeys()


@pytest.fixture
def hooks_ctx(make_settings: Callable[..., Settings]) -> Iterator[Context]:
    context = Context.open(
        make_settings(
            NEWSLETTER_MAILGUN_SIGNING_KEY=KEY,
            NEWSLETTER_POSTMARK_WEBHOOK_TOKEN=TOKEN,
            NEWSLETTER_SENDGRID_PUBLIC_KEY=_SENDGRID.public,
            NEWSLETTER_SES_TOPIC_ARNS=TOPIC,
        )
    )
    with context.db.write() as session:
        for address in ADDRESSES:
            subs.add_subscriber(session, address, confirmed=True)
    yield context
    context.close()


def _status(ctx: Context, address: str) -> SubscriberStatus:
    with ctx.db.read() as session:
        return session.scalars(select(Subscriber.status).where(Subscriber.email == address)).one()


def _events(ctx: Context) -> int:
    with ctx.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(BounceEvent)) or 0)


def test_every_route_is_404_until_configured(ctx: Context) -> None:
    client = create_app(ctx).test_client()
    for provider in ("mailgun", "postmark", "sendgrid", "ses"):
        assert client.post(f"/webhooks/{provider}", data=b"{}").status_code == 404


def test_mailgun_good_bad_and_retried(hooks_ctx: Context) -> None:
    client = create_app(hooks_ctx).test_client()
    forged = mailgun_body("mailgun-failed-permanent.json", "wrong-key", time.time())
    assert client.post("/webhooks/mailgun", data=forged).status_code == 403
    assert _status(hooks_ctx, "alice@example.com") is SubscriberStatus.ACTIVE and not _events(
        hooks_ctx
    )
    body = mailgun_body("mailgun-failed-permanent.json", KEY, time.time())
    for _ in range(2):  # the provider retries: recorded once
        assert client.post("/webhooks/mailgun", data=body).status_code == 200
    assert _status(hooks_ctx, "alice@example.com") is SubscriberStatus.BOUNCED
    assert _events(hooks_ctx) == 1


def test_postmark_token_in_url_or_basic_auth(hooks_ctx: Context) -> None:
    client = create_app(hooks_ctx).test_client()
    body = json.dumps(fixture("postmark-spamcomplaint.json")).encode()
    assert client.post("/webhooks/postmark/not-the-token", data=body).status_code == 403
    assert client.post("/webhooks/postmark", data=body).status_code == 403
    assert _status(hooks_ctx, "john@example.com") is SubscriberStatus.ACTIVE
    auth = base64.b64encode(f"postmark:{TOKEN}".encode()).decode()
    response = client.post(
        "/webhooks/postmark", data=body, headers={"Authorization": f"Basic {auth}"}
    )
    assert response.status_code == 200
    assert _status(hooks_ctx, "john@example.com") is SubscriberStatus.COMPLAINED
    bounce = json.dumps(fixture("postmark-bounce.json")).encode()
    assert client.post(f"/webhooks/postmark/{TOKEN}", data=bounce).status_code == 200


def test_sendgrid_good_and_bad_signature_and_a_big_batch(hooks_ctx: Context) -> None:
    client = create_app(hooks_ctx).test_client()
    events = fixture("sendgrid-events.json")
    filler = [{**events[3], "sg_event_id": f"filler-{i}"} for i in range(400)]  # ~120 kB
    body = json.dumps(events + filler).encode()
    assert len(body) > 64 * 1024  # more than any form may send
    stamp = str(int(time.time()))
    headers = {
        "X-Twilio-Email-Event-Webhook-Signature": _SENDGRID.sign(body, stamp),
        "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
    }
    bad = {**headers, "X-Twilio-Email-Event-Webhook-Signature": SendGridKeys().sign(body, stamp)}
    assert client.post("/webhooks/sendgrid", data=body, headers=bad).status_code == 403
    assert _events(hooks_ctx) == 0
    assert client.post("/webhooks/sendgrid", data=body, headers=headers).status_code == 200
    assert _status(hooks_ctx, "example@test.com") is SubscriberStatus.BOUNCED
    assert _events(hooks_ctx) == 3  # bounce, blocked, spam report; "delivered" is no event
    assert client.post("/subscribe", data=body).status_code == 413  # the forms keep 64 kB


def test_ses_subscription_and_notifications(hooks_ctx: Context) -> None:
    signer = SnsSigner()
    app = create_app(hooks_ctx)
    visited: list[str] = []
    with cert_server(signer.cert_pem) as (base, _asked):

        def fetch(url: str) -> bytes:
            visited.append(url)
            path = url.split("amazonaws.com", 1)[1]
            with urllib.request.urlopen(base + path, timeout=10) as response:
                data: bytes = response.read()
                return data

        app.extensions["newsletter.sns_fetch"] = fetch
        client = app.test_client()
        confirmation = fixture("sns-subscription-confirmation.json")
        confirmation["Timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        confirmation.pop("SigningCertURL")
        response = client.post(
            "/webhooks/ses", data=signer.message("SubscriptionConfirmation", confirmation)
        )
        assert response.status_code == 200
        assert visited[-1] == confirmation["SubscribeURL"]
        now = dt.datetime.now(dt.UTC)
        forged = SnsSigner().notification(fixture("ses-bounce.json"), now, "n-9")
        assert client.post("/webhooks/ses", data=forged).status_code == 403
        assert _status(hooks_ctx, "jane@example.com") is SubscriberStatus.ACTIVE
        good = signer.notification(fixture("ses-bounce.json"), now, "n-10")
        assert client.post("/webhooks/ses", data=good).status_code == 200
        assert _status(hooks_ctx, "jane@example.com") is SubscriberStatus.BOUNCED
        assert client.post("/webhooks/ses", data=b"not json").status_code == 400
