"""Webhook verification and parsing, with keys generated here (no provider reached)."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from _webhook_support import (
    CERT_URL,
    TOPIC,
    SendGridKeys,
    SnsSigner,
    cert_server,
    fixture,
    local_fetch,
    mailgun_body,
)

from newsletter.bounces import webhooks
from newsletter.bounces.webhooks import BadSignature, SnsVerifier

KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"


def test_mailgun_good_signature() -> None:
    now = time.time()
    (event,) = webhooks.mailgun(
        mailgun_body("mailgun-failed-permanent.json", KEY, now), KEY, now=now
    )
    assert event.key == "mailgun:G9Bn5sl1TC6nu79C8C0bwg"
    assert (event.finding.recipient, event.finding.type) == ("alice@example.com", "hard")
    assert event.finding.message_id == "<20130503192659.13651.20287@sandbox.mailgun.org>"
    (complaint,) = webhooks.mailgun(mailgun_body("mailgun-complained.json", KEY, now), KEY, now=now)
    assert complaint.finding.type == "complaint"


def test_mailgun_bad_signature_and_replay() -> None:
    now = time.time()
    with pytest.raises(BadSignature):
        webhooks.mailgun(
            mailgun_body("mailgun-failed-permanent.json", "other-key", now), KEY, now=now
        )
    stale = mailgun_body("mailgun-failed-permanent.json", KEY, now - 301)
    with pytest.raises(BadSignature, match="replay"):
        webhooks.mailgun(stale, KEY, now=now)
    with pytest.raises(BadSignature):
        webhooks.mailgun(fixture_bytes("mailgun-complained.json"), KEY, now=now)


def fixture_bytes(name: str) -> bytes:
    import json

    return json.dumps(fixture(name)).encode()


def test_postmark_bounce_and_complaint() -> None:
    assert webhooks.postmark_token_ok("abc", "abc") and not webhooks.postmark_token_ok("abc", "abd")
    assert not webhooks.postmark_token_ok("abc", None)
    (bounce,) = webhooks.postmark(fixture_bytes("postmark-bounce.json"))
    assert (bounce.finding.recipient, bounce.finding.type, bounce.finding.status) == (
        "john@example.com",
        "hard",
        "5.1.1",
    )
    (complaint,) = webhooks.postmark(fixture_bytes("postmark-spamcomplaint.json"))
    assert complaint.finding.type == "complaint" and complaint.key == "postmark:complaint:42"


def test_sendgrid_good_and_bad_signature() -> None:
    keys = SendGridKeys()
    body = fixture_bytes("sendgrid-events.json")
    stamp = str(int(time.time()))
    events = webhooks.sendgrid(body, keys.sign(body, stamp), stamp, keys.public)
    assert [(e.finding.recipient, e.finding.type) for e in events] == [
        ("example@test.com", "hard"),
        ("example2@test.com", "policy"),
        ("example3@test.com", "complaint"),
    ]
    with pytest.raises(BadSignature):
        webhooks.sendgrid(body + b" ", keys.sign(body, stamp), stamp, keys.public)
    with pytest.raises(BadSignature):
        webhooks.sendgrid(body, SendGridKeys().sign(body, stamp), stamp, keys.public)
    old = str(int(time.time()) - 600)
    with pytest.raises(BadSignature, match="replay"):
        webhooks.sendgrid(body, keys.sign(body, old), old, keys.public)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@pytest.mark.parametrize("version", ["1", "2"])
def test_ses_via_sns_good_signature_and_cached_certificate(version: str) -> None:
    signer = SnsSigner()
    with cert_server(signer.cert_pem) as (base, asked):
        verifier = SnsVerifier((TOPIC,), fetch=local_fetch(base))
        body = signer.message(
            "Notification",
            {
                "MessageId": "n-1",
                "Message": fixture_bytes("ses-bounce.json").decode(),
                "Timestamp": _now().strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            },
            version=version,
        )
        result = verifier.handle(body)
        (event,) = result.events
        assert (event.key, event.finding.recipient, event.finding.type) == (
            "ses:n-1:0",
            "jane@example.com",
            "hard",
        )
        assert event.finding.message_id == "<custom-message-ID>"
        complaint = signer.notification(fixture("ses-complaint.json"), _now(), "n-2")
        assert verifier.handle(complaint).events[0].finding.type == "complaint"
        assert len(asked) == 1  # the certificate was fetched once and cached


def test_sns_subscription_confirmation() -> None:
    signer = SnsSigner()
    confirmation = fixture("sns-subscription-confirmation.json")
    confirmation["Timestamp"] = _now().strftime("%Y-%m-%dT%H:%M:%S.000Z")
    confirmation.pop("SigningCertURL")
    with cert_server(signer.cert_pem) as (base, _):
        verifier = SnsVerifier((TOPIC,), fetch=local_fetch(base))
        result = verifier.handle(signer.message("SubscriptionConfirmation", confirmation))
    assert result.subscribe_url is not None
    assert result.subscribe_url.startswith("https://sns.us-west-2.amazonaws.com/?Action=Confirm")


def test_sns_bad_signature_wrong_topic_and_foreign_certificate_url() -> None:
    signer, impostor = SnsSigner(), SnsSigner()
    with cert_server(signer.cert_pem) as (base, asked):
        verifier = SnsVerifier((TOPIC,), fetch=local_fetch(base))
        forged = impostor.notification(fixture("ses-bounce.json"), _now())
        with pytest.raises(BadSignature, match="signature"):
            verifier.handle(forged)
        other_topic = signer.message(
            "Notification",
            {
                "MessageId": "x",
                "Message": "{}",
                "Timestamp": "2026-01-01T00:00:00.000Z",
                "TopicArn": "arn:aws:sns:us-west-2:999:Other",
            },
        )
        with pytest.raises(BadSignature, match="topic"):
            verifier.handle(other_topic)
        for url in (
            f"{base}/cert.pem",
            "https://sns.us-west-2.amazonaws.com.evil.example/cert.pem",
            "https://evil.example/sns.us-west-2.amazonaws.com/cert.pem",
            "http://sns.us-west-2.amazonaws.com/cert.pem",
        ):
            body = signer.message(
                "Notification",
                {
                    "MessageId": "y",
                    "Message": "{}",
                    "SigningCertURL": url,
                    "Timestamp": _now().strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                },
            )
            with pytest.raises(BadSignature, match="SigningCertURL"):
                verifier.handle(body)
        stale = signer.notification(fixture("ses-bounce.json"), _now() - dt.timedelta(minutes=6))
        with pytest.raises(BadSignature, match="replay"):
            verifier.handle(stale)
    assert all(path.endswith("SimpleNotificationService-test.pem") for path in asked)
    assert webhooks.sns_cert_url_allowed(CERT_URL)
