"""What happened to one message, and what can send one: the types every sender shares.

They sit below both the SMTP pool (``transport``) and the Maildir outbox (``outbox``),
so that neither has to import the other, and the ledger and engine can speak of
outcomes without pulling in a transport.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class Outcome(enum.StrEnum):
    SENT = "sent"  # 2xx to the end of DATA: the server took responsibility
    RETRY = "retry"  # 4xx, a dropped connection or a timeout: try again later
    BOUNCE = "bounce"  # 5.1.x / 5.2.x: no such user / mailbox gone: never mail again
    POLICY = "policy"  # 5.7.x, authentication, TLS: the sender's problem: pause the issue
    QUOTA = "quota"  # the relay's daily sending quota is used up: wait until tomorrow
    FAILED = "failed"  # any other permanent refusal of this one message


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What happened to one message: the class, and the server's own words."""

    outcome: Outcome
    code: int | None
    response: str
    relay: str | None = None  # which relay answered (its URL without the password)
    relay_fault: bool = False  # failed while opening the session: the relay, not the message

    @property
    def text(self) -> str:  # "550 5.1.1 no such user", for logs, the ledger and the CLI
        return f"{self.code} {self.response}".strip() if self.code else self.response


class Transport(Protocol):
    """Anything that can push one message to one recipient (thread-safe)."""

    concurrency: int
    description: str

    def send(self, envelope_from: str, recipient: str, data: bytes) -> SendOutcome: ...

    def close(self) -> None: ...
