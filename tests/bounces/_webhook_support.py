"""Signing webhook payloads as each provider does, with keys the tests generate."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "webhooks"
TOPIC = "arn:aws:sns:us-west-2:123456789012:MyTopic"
CERT_URL = "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-test.pem"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def mailgun_body(name: str, key: str, timestamp: float, token: str = "tok" * 10) -> bytes:
    payload = fixture(name)
    stamp = str(int(timestamp))
    sig = hmac.new(key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
    payload["signature"] = {"timestamp": stamp, "token": token, "signature": sig}
    return json.dumps(payload).encode()


class SendGridKeys:
    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        der = self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public = base64.b64encode(der).decode()  # as SendGrid's console shows it

    def sign(self, body: bytes, timestamp: str) -> str:
        raw = self.private.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(raw).decode()


class SnsSigner:
    """An RSA key and a self-signed certificate standing in for Amazon's."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        now = dt.datetime.now(dt.UTC)
        self.cert_pem = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(self.key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
        )

    def message(self, kind: str, body: dict[str, Any], version: str = "1") -> bytes:
        message = dict(body)
        message.update(
            {
                "Type": kind,
                "TopicArn": message.get("TopicArn", TOPIC),
                "SignatureVersion": version,
                "SigningCertURL": message.get("SigningCertURL", CERT_URL),
            }
        )
        names = (
            ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
            if kind == "Notification"
            else ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
        )
        canonical = "".join(f"{n}\n{message[n]}\n" for n in names if n in message).encode()
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()  # noqa: S303 - SNS v1
        signature = self.key.sign(canonical, padding.PKCS1v15(), algorithm)
        message["Signature"] = base64.b64encode(signature).decode()
        return json.dumps(message).encode()

    def notification(
        self, ses: dict[str, Any], timestamp: dt.datetime, msg_id: str = "m-1"
    ) -> bytes:
        return self.message(
            "Notification",
            {
                "MessageId": msg_id,
                "Message": json.dumps(ses),
                "Timestamp": timestamp.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            },
        )


@contextmanager
def cert_server(pem: bytes) -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server serving ``pem`` at any path; yields (base URL, paths asked)."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-pem-file")
            self.end_headers()
            self.wfile.write(pem)

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()


def local_fetch(base: str):  # type: ignore[no-untyped-def]
    """A fetch that sends the (already allow-listed) SNS URL's path to our server."""

    def fetch(url: str) -> bytes:
        path = url.split("amazonaws.com", 1)[1]
        with urllib.request.urlopen(base + path, timeout=10) as response:
            data: bytes = response.read()
            return data

    return fetch
