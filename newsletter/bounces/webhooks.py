"""Provider webhooks: verify the signature, then read the events as findings.

Pure functions (no Flask, no database): the HTTP layer hands over the raw body
and headers, gets back :class:`Event` objects (a dedupe key and a
:class:`~newsletter.bounces.parse.Finding`) or an exception, and the caller
applies the findings exactly like those read from a mailbox.

* Mailgun: HMAC-SHA256 of ``timestamp + token`` with the webhook signing key.
* Postmark: a shared token, in the URL or as the basic-auth password.
* SendGrid: ECDSA P-256/SHA-256 over ``timestamp + body`` with the public key
  the SendGrid console shows (base64 DER).
* Amazon SES through SNS: RSA signature of SNS's canonical string, checked with
  the certificate at ``SigningCertURL``, which must be on
  ``https://sns.<region>.amazonaws.com/``; certificates are cached.  The topic ARN
  must be allow-listed.  A ``SubscriptionConfirmation`` yields the URL to visit.

Where the provider signs a timestamp, anything older (or newer) than
:data:`REPLAY_WINDOW` is refused: a captured request cannot be replayed later.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import classify as cls
from .parse import Finding
from .verp import TAG_PATTERN

__all__ = [
    "REPLAY_WINDOW",
    "BadPayload",
    "BadSignature",
    "Event",
    "SnsResult",
    "SnsVerifier",
    "fetch_https",
    "mailgun",
    "postmark",
    "sendgrid",
    "sns_cert_url_allowed",
]

REPLAY_WINDOW = 300.0  # seconds either side of now
_TAG = re.compile(TAG_PATTERN, re.IGNORECASE)
_SNS_HOST = re.compile(r"https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/[^?#\s]*")
_SNS_SUBSCRIBE = re.compile(r"https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/\?[^#\s]*")


class BadSignature(Exception):
    """Unsigned, wrongly signed, stale, or from a topic we do not accept: 403."""


class BadPayload(ValueError):
    """Signed (or not yet checkable) but not the provider's format: 400."""


@dataclass(frozen=True, slots=True)
class Event:
    key: str  # recorded once: "mailgun:<event id>", "ses:<SNS MessageId>:<n>", ...
    finding: Finding


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadPayload("body is not JSON") from None


def _fresh(timestamp: float, now: float | None) -> None:
    now = time.time() if now is None else now
    if abs(now - timestamp) > REPLAY_WINDOW:
        raise BadSignature("timestamp outside the replay window")


def _msgid(value: object) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    value = value.strip()
    return value if value.startswith("<") else f"<{value}>"


def _tag_in(value: object) -> str | None:
    match = _TAG.search(json.dumps(value)) if value else None
    return match.group(0).lower() if match else None


def _lower(value: object) -> str | None:
    return value.strip().lower() if isinstance(value, str) and "@" in value else None


# --- Mailgun ------------------------------------------------------------------------


def mailgun(body: bytes, signing_key: str, *, now: float | None = None) -> list[Event]:
    """Verify and read one Mailgun webhook (JSON, the format since 2018)."""
    payload = _json(body)
    if not isinstance(payload, dict):
        raise BadPayload("expected a JSON object")
    sig = payload.get("signature")
    if not isinstance(sig, dict):
        raise BadSignature("no signature")
    timestamp, token, signature = (str(sig.get(k, "")) for k in ("timestamp", "token", "signature"))
    expected = hmac.new(
        signing_key.encode(), (timestamp + token).encode(), hashlib.sha256
    ).hexdigest()
    if not (token and hmac.compare_digest(expected, signature.lower())):
        raise BadSignature("signature does not match")
    try:
        _fresh(float(timestamp), now)
    except ValueError:
        raise BadSignature("bad timestamp") from None
    data = payload.get("event-data")
    if not isinstance(data, dict):
        raise BadPayload("no event-data")
    finding = _mailgun_finding(data)
    return [Event(f"mailgun:{data.get('id') or token}", finding)] if finding else []


def _mailgun_finding(data: dict[str, Any]) -> Finding | None:
    event = str(data.get("event", ""))
    recipient = _lower(data.get("recipient"))
    message = data.get("message") if isinstance(data.get("message"), dict) else {}
    headers = message.get("headers", {}) if isinstance(message, dict) else {}
    refs = {
        "message_id": _msgid(headers.get("message-id") if isinstance(headers, dict) else None),
        "tag": _tag_in(data.get("user-variables")),
    }
    if event == "complained":
        return Finding(recipient, "complaint", text="complaint (mailgun)", **refs)
    if event != "failed":
        return None
    status = data.get("delivery-status") if isinstance(data.get("delivery-status"), dict) else {}
    assert isinstance(status, dict)
    text = " ".join(str(status.get(k) or "") for k in ("message", "description")).strip()
    code = status.get("enhanced-code") or None
    if data.get("severity") != "permanent":
        return Finding(
            recipient, "none", code, text or "temporary failure", action="delayed", **refs
        )
    kind = "hard" if data.get("reason") == "suppress-bounce" else cls.classify(code, text)
    return Finding(
        recipient, kind, code, text or str(data.get("reason", "")), action="failed", **refs
    )


# --- Postmark ------------------------------------------------------------------------

_POSTMARK_TYPES = {
    "HardBounce": "hard",
    "BadEmailAddress": "hard",
    "SoftBounce": "soft",
    "Transient": "none",
    "DnsError": "soft",
    "Blocked": "policy",
    "ContentRelated": "policy",
    "VirusNotification": "policy",
    "DMARCPolicy": "policy",
    "SpamNotification": "policy",
    "SpamComplaint": "complaint",
    "AutoResponder": "autoreply",
}


def postmark_token_ok(expected: str, given: str | None) -> bool:
    """Constant-time comparison of the configured token and the one presented."""
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())


def postmark(body: bytes) -> list[Event]:
    """Read one Postmark bounce or spam-complaint webhook (the token is checked before)."""
    payload = _json(body)
    if not isinstance(payload, dict):
        raise BadPayload("expected a JSON object")
    record = str(payload.get("RecordType", ""))
    recipient = _lower(payload.get("Email"))
    ident = payload.get("ID") or payload.get("MessageID")
    tag = _tag_in(payload.get("Metadata"))
    if record == "SpamComplaint":
        finding = Finding(recipient, "complaint", text="spam complaint (postmark)", tag=tag)
        return [Event(f"postmark:complaint:{ident}", finding)]
    if record != "Bounce":
        return []
    details = str(payload.get("Details") or "")
    description = str(payload.get("Description") or "")
    status = cls.find_status(details)
    mapped = _POSTMARK_TYPES.get(str(payload.get("Type")), "none")
    if mapped in ("hard", "soft"):  # the server's own words outrank the provider's label
        mapped = cls.rule_class(details) or mapped
    finding = Finding(recipient, mapped, status, (details or description)[:1000], tag=tag)
    return [Event(f"postmark:bounce:{ident}", finding)]


# --- SendGrid ------------------------------------------------------------------------


def sendgrid(
    body: bytes,
    signature: str | None,
    timestamp: str | None,
    public_key: str,
    *,
    now: float | None = None,
) -> list[Event]:
    """Verify (ECDSA over ``timestamp + body``) and read a SendGrid Event Webhook batch."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if not signature or not timestamp:
        raise BadSignature("missing signature headers")
    try:
        key = serialization.load_der_public_key(base64.b64decode(_pem_body(public_key)))
        raw_sig = base64.b64decode(signature, validate=True)
    except (ValueError, binascii.Error):
        raise BadSignature("unreadable key or signature") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise BadSignature("NEWSLETTER_SENDGRID_PUBLIC_KEY is not an EC public key")
    try:
        key.verify(raw_sig, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise BadSignature("signature does not match") from None
    try:
        _fresh(float(timestamp), now)
    except ValueError:
        raise BadSignature("bad timestamp") from None
    events = _json(body)
    if not isinstance(events, list):
        raise BadPayload("expected a JSON array of events")
    out = []
    for number, item in enumerate(events):
        if isinstance(item, dict):
            finding = _sendgrid_finding(item)
            if finding is not None:
                ident = item.get("sg_event_id") or f"{item.get('sg_message_id')}:{number}"
                out.append(Event(f"sendgrid:{ident}", finding))
    return out


def _pem_body(text: str) -> str:
    """The base64 of a key given bare (as SendGrid shows it) or as PEM."""
    return "".join(line for line in text.strip().splitlines() if not line.startswith("-----"))


def _sendgrid_finding(item: dict[str, Any]) -> Finding | None:
    event = item.get("event")
    recipient = _lower(item.get("email"))
    refs = {"message_id": _msgid(item.get("smtp-id")), "tag": _tag_in(item.get("newsletter_tag"))}
    if event == "spamreport":
        return Finding(recipient, "complaint", text="spam report (sendgrid)", **refs)
    if event == "deferred":
        return Finding(
            recipient, "none", None, str(item.get("response", ""))[:1000], action="delayed", **refs
        )
    if event != "bounce":
        return None
    status = item.get("status") if isinstance(item.get("status"), str) else None
    reason = str(item.get("reason", ""))
    kind = cls.classify(status, reason)
    if item.get("type") == "blocked" and kind == "hard":
        kind = "soft"  # SendGrid's "blocked" is a temporary block: never suppress on it
    return Finding(recipient, kind, status, reason[:1000], action="failed", **refs)


# --- Amazon SES through SNS ------------------------------------------------------------------


def sns_cert_url_allowed(url: str) -> bool:
    """Only ``https://sns.<region>.amazonaws.com/...``: anything else could be an attacker's key."""
    return bool(_SNS_HOST.fullmatch(url)) and url.endswith(".pem")


def fetch_https(url: str) -> bytes:
    import urllib.request

    # Bandit B310: only https://sns.<region>.amazonaws.com/....pem gets here (the caller
    # checks sns_cert_url_allowed), so no file: or custom scheme can be opened.
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310  # nosec B310
        data: bytes = response.read(65536)
        return data


@dataclass
class SnsResult:
    events: list[Event] = field(default_factory=list)
    subscribe_url: str | None = None  # a SubscriptionConfirmation: visit it to subscribe


_SIGNED_NOTIFICATION = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_SIGNED_SUBSCRIPTION = (
    "Message",
    "MessageId",
    "SubscribeURL",
    "Timestamp",
    "Token",
    "TopicArn",
    "Type",
)


class SnsVerifier:
    """Checks SNS messages; holds the certificate cache (one per process is enough).

    ``fetch`` gets a certificate's PEM bytes for an allow-listed URL; tests inject
    one that serves their own certificate from a local server, while the URL
    check itself always runs.
    """

    def __init__(
        self, topic_arns: tuple[str, ...], fetch: Callable[[str], bytes] | None = None
    ) -> None:
        self._topics = frozenset(topic_arns)
        self._fetch = fetch or fetch_https
        self._certs: dict[str, Any] = {}
        self._lock = threading.Lock()

    def handle(self, body: bytes, *, now: float | None = None) -> SnsResult:
        message = _json(body)
        if not isinstance(message, dict) or not isinstance(message.get("Type"), str):
            raise BadPayload("not an SNS message")
        if message.get("TopicArn") not in self._topics:
            raise BadSignature("topic not in NEWSLETTER_SES_TOPIC_ARNS")
        self._verify(message)
        try:
            stamp = datetime.fromisoformat(str(message.get("Timestamp")).replace("Z", "+00:00"))
        except ValueError:
            raise BadSignature("bad timestamp") from None
        _fresh(stamp.timestamp(), now)
        kind = message["Type"]
        if kind == "SubscriptionConfirmation":
            url = str(message.get("SubscribeURL", ""))
            if not _SNS_SUBSCRIBE.fullmatch(url):
                raise BadSignature("SubscribeURL is not on sns.<region>.amazonaws.com")
            return SnsResult(subscribe_url=url)
        if kind != "Notification":
            return SnsResult()
        return SnsResult(
            events=ses_events(str(message.get("MessageId")), str(message.get("Message", "")))
        )

    def _verify(self, message: Mapping[str, Any]) -> None:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, rsa

        names = _SIGNED_NOTIFICATION if message["Type"] == "Notification" else _SIGNED_SUBSCRIPTION
        canonical = "".join(
            f"{name}\n{message[name]}\n" for name in names if message.get(name) is not None
        ).encode()
        version = str(message.get("SignatureVersion", "1"))
        # Bandit B303: SNS SignatureVersion 1 is SHA-1 by Amazon's definition; we only
        # verify Amazon's signature with it (version 2, SHA-256, where SNS offers it).
        algorithm = {"1": hashes.SHA1(), "2": hashes.SHA256()}.get(version)  # noqa: S303  # nosec B303
        if algorithm is None:
            raise BadSignature(f"unknown SignatureVersion {version!r}")
        key = self._public_key(str(message.get("SigningCertURL", "")))
        try:
            signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
            if not isinstance(key, rsa.RSAPublicKey):
                raise BadSignature("SNS certificate without an RSA key")
            key.verify(signature, canonical, padding.PKCS1v15(), algorithm)
        except (InvalidSignature, binascii.Error, ValueError):
            raise BadSignature("signature does not match") from None

    def _public_key(self, url: str) -> Any:
        from cryptography import x509

        if not sns_cert_url_allowed(url):
            raise BadSignature("SigningCertURL is not on https://sns.<region>.amazonaws.com/")
        with self._lock:
            key = self._certs.get(url)
        if key is None:
            try:
                key = x509.load_pem_x509_certificate(self._fetch(url)).public_key()
            except (OSError, ValueError) as exc:
                raise BadSignature(f"cannot load the signing certificate: {exc}") from None
            with self._lock:
                self._certs[url] = key
        return key


def ses_events(sns_id: str, text: str) -> list[Event]:
    """The SES notification (bounce or complaint) inside an SNS message."""
    try:
        note = json.loads(text)
    except ValueError:
        raise BadPayload("SNS Message is not an SES notification") from None
    if not isinstance(note, dict):
        raise BadPayload("SNS Message is not an SES notification")
    kind = note.get("notificationType") or note.get("eventType")
    mail = note.get("mail") if isinstance(note.get("mail"), dict) else {}
    assert isinstance(mail, dict)
    headers = {
        str(h.get("name", "")).lower(): h.get("value")
        for h in mail.get("headers", [])
        if isinstance(h, dict)
    }
    common = mail.get("commonHeaders") if isinstance(mail.get("commonHeaders"), dict) else {}
    refs = {
        "message_id": _msgid(headers.get("message-id") or (common or {}).get("messageId")),
        "tag": _tag_in(headers.get("x-newsletter-tag")),
    }
    out: list[Event] = []
    if kind == "Complaint":
        complaint = note.get("complaint") or {}
        for n, rcpt in enumerate(complaint.get("complainedRecipients", [])):
            feedback = str(complaint.get("complaintFeedbackType") or "abuse")
            finding = Finding(
                _lower(rcpt.get("emailAddress")),
                "complaint",
                text=f"feedback: {feedback}",
                feedback_type=feedback,
                **refs,
            )
            out.append(Event(f"ses:{sns_id}:{n}", finding))
    elif kind == "Bounce":
        bounce = note.get("bounce") or {}
        permanent = bounce.get("bounceType") == "Permanent"
        for n, rcpt in enumerate(bounce.get("bouncedRecipients", [])):
            diagnostic = str(rcpt.get("diagnosticCode") or bounce.get("bounceSubType") or "")
            status = rcpt.get("status") if isinstance(rcpt.get("status"), str) else None
            kind_ = (
                cls.classify(status, diagnostic)
                if permanent
                else _ses_transient(bounce, diagnostic)
            )
            if (
                bounce.get("bounceSubType") in ("Suppressed", "OnAccountSuppressionList")
                and permanent
            ):
                kind_ = "hard"  # SES already knows the address hard-bounced
            finding = Finding(
                _lower(rcpt.get("emailAddress")),
                kind_,
                status,
                diagnostic[:1000],
                action="failed",
                **refs,
            )
            out.append(Event(f"ses:{sns_id}:{n}", finding))
    return out


def _ses_transient(bounce: Mapping[str, Any], diagnostic: str) -> str:
    """Transient/Undetermined: soft, or policy when SES says the content was refused."""
    if bounce.get("bounceSubType") in ("ContentRejected", "AttachmentRejected"):
        return "policy"
    kind = cls.rule_class(diagnostic)
    return "soft" if kind in (None, "hard") else kind
