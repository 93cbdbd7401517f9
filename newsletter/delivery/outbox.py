"""The Maildir outbox: where mail goes when no ``NEWSLETTER_SMTP_URL`` is set.

The embedded default (and what ``newsletter demo`` uses): every message becomes one
standard RFC 5322 file in ``outbox/new/`` that any mail client or ``mutt -f`` opens,
so a first run needs no mail server at all.
"""

from __future__ import annotations

import mailbox
import threading
from pathlib import Path

from .outcome import Outcome, SendOutcome


class MaildirOutbox:
    """A Maildir (``new/`` holds one RFC 5322 file per message), for demos and dry runs.

    Files use LF line endings as Maildir tools expect; ``Return-Path`` and
    ``Delivered-To`` are prepended, as a local delivery agent would, so the
    envelope is visible in any mail client.
    """

    concurrency = 1

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"Maildir {path}"
        self._box = mailbox.Maildir(str(path))  # created when missing
        self._lock = threading.Lock()

    def send(self, envelope_from: str, recipient: str, data: bytes) -> SendOutcome:
        if "\r" in recipient or "\n" in recipient or "\r" in envelope_from or "\n" in envelope_from:
            return SendOutcome(Outcome.FAILED, None, "control characters in an address")
        trace = f"Return-Path: <{envelope_from}>\r\nDelivered-To: {recipient}\r\n".encode()
        body = (trace + data).replace(b"\r\n", b"\n")
        try:
            with self._lock:
                key = self._box.add(body)
        except OSError as exc:
            return SendOutcome(Outcome.RETRY, None, f"writing to {self.path}: {exc}")
        return SendOutcome(Outcome.SENT, 250, f"saved as {key}")

    def close(self) -> None:
        self._box.close()
