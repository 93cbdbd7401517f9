"""Bounce messages built from what a test actually sent, and a Maildir to drop them in."""

from __future__ import annotations

import itertools
from pathlib import Path

from conftest import Received

_counter = itertools.count(1)


def original_headers(received: Received) -> bytes:
    return received.data.split(b"\r\n\r\n", 1)[0] + b"\r\n"


def dsn_for(
    received: Received,
    *,
    status: str = "5.1.1",
    diagnostic: str = "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown",
    action: str = "failed",
    to: str | None = None,
    quote: bool = True,
) -> bytes:
    """An RFC 3464 DSN as Postfix writes it, to the message's envelope sender.

    ``to`` overrides the address it comes back to (a relay that rewrote the
    envelope); ``quote=False`` leaves out the original's headers.
    """
    rcpt = received.rcpt_tos[0]
    n = next(_counter)
    parts = [
        "Return-Path: <>",
        f"Message-ID: <dsn{n}.test@mx.example.net>",
        "From: MAILER-DAEMON@mx.example.net (Mail Delivery System)",
        f"To: {to or received.envelope_from}",
        "Subject: Undelivered Mail Returned to Sender",
        "MIME-Version: 1.0",
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B0"',
        "",
        "--B0",
        "Content-Type: text/plain",
        "",
        f"<{rcpt}>: host mx.example.net said: {diagnostic.format(rcpt=rcpt)}",
        "",
        "--B0",
        "Content-Type: message/delivery-status",
        "",
        "Reporting-MTA: dns; mx.example.net",
        "",
        f"Final-Recipient: rfc822; {rcpt}",
        f"Action: {action}",
        f"Status: {status}",
        f"Diagnostic-Code: smtp; {diagnostic.format(rcpt=rcpt)}",
        "",
    ]
    text = "\r\n".join(parts).encode()
    if quote:
        text += b"--B0\r\nContent-Type: text/rfc822-headers\r\n\r\n" + original_headers(received)
        text += b"\r\n"
    return text + b"--B0--\r\n"


def arf_for(received: Received) -> bytes:
    """An RFC 5965 feedback report embedding the whole message that was sent."""
    n = next(_counter)
    head = (
        f"Message-ID: <arf{n}.test@fbl.example.com>\r\n"
        "From: Feedback Loop <fbl@fbl.example.com>\r\n"
        "To: abuse@example.com\r\n"
        "Subject: Complaint about a message from example.com\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="F0"\r\n\r\n'
        "--F0\r\nContent-Type: text/plain\r\n\r\nA reader marked this message as spam.\r\n\r\n"
        "--F0\r\nContent-Type: message/feedback-report\r\n\r\n"
        "Feedback-Type: abuse\r\nUser-Agent: TestFBL/1.0\r\nVersion: 1\r\n\r\n"
        "--F0\r\nContent-Type: message/rfc822\r\n\r\n"
    ).encode()
    return head + received.data + b"\r\n--F0--\r\n"


def out_of_office(received: Received) -> bytes:
    rcpt = received.rcpt_tos[0]
    return (
        f"Message-ID: <ooo{next(_counter)}@example.org>\r\nFrom: {rcpt}\r\n"
        f"To: {received.envelope_from}\r\nSubject: Out of Office: Today's stories\r\n"
        "Auto-Submitted: auto-replied\r\n\r\n"
        "I am away until Monday; your message about mailbox full quotas will wait.\r\n"
    ).encode()


def maildir(root: Path, messages: list[bytes]) -> Path:
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for data in messages:
        (root / "new" / f"1764486131.M{next(_counter)}P7.mx").write_bytes(data)
    return root
