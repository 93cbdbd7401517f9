"""Helpers shared by the delivery tests: subscribers in bulk, a frozen issue, fault handlers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from typing import Any

from conftest import Received, RecordingHandler
from sqlalchemy import insert, select

from newsletter.context import Context
from newsletter.delivery import ledger
from newsletter.mail.render import ARCHIVE_URL, GREETING, UNSUBSCRIBE_URL
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Issue,
    IssueKind,
    IssueStatus,
    Subscriber,
    SubscriberStatus,
    utcnow,
)

HTML = (
    f"<!doctype html><html><body><p>{GREETING}</p><p>A frozen issue.</p>"
    f'<p><a href="{ARCHIVE_URL}">View in browser</a> · '
    f'<a href="{UNSUBSCRIBE_URL}">Unsubscribe</a></p>'
    "<p>1 Fleet Street, London EC4Y 1AA</p></body></html>"
)
TEXT = (
    f"{GREETING}\n\nA frozen issue.\n\nView in browser: {ARCHIVE_URL}\n"
    f"Unsubscribe: {UNSUBSCRIBE_URL}\n"
    "1 Fleet Street, London EC4Y 1AA\n"
)


def email_for(i: int) -> str:
    return f"reader{i:06d}@example.org"


def add_subscribers(
    ctx: Context, n: int, status: SubscriberStatus = SubscriberStatus.ACTIVE, start: int = 0
) -> list[int]:
    now = utcnow()
    rows = [
        {
            "email": email_for(i),
            "name": f"Reader {i}",
            "status": status.value,
            "created_at": now,
            "bounce_count": 0,
            "source": "cli",
        }
        for i in range(start, start + n)
    ]
    with ctx.db.write() as session:
        if rows:
            session.execute(insert(Subscriber.__table__), rows)
        return list(
            session.scalars(
                select(Subscriber.id).where(Subscriber.email.in_([r["email"] for r in rows]))
            )
        )


def make_issue(ctx: Context, subject: str = "Today's stories", enqueue: bool = True) -> int:
    """A manual issue with frozen html/text (as build_issue would leave it), enqueued."""
    with ctx.db.write() as session:
        issue = Issue(
            kind=IssueKind.MANUAL,
            subject=subject,
            status=IssueStatus.SENDING,
            html=HTML,
            text=TEXT,
            preheader="",
        )
        session.add(issue)
        session.flush()
        if enqueue:
            ledger.enqueue(session, issue.id)
        return issue.id


def statuses(ctx: Context, issue_id: int) -> dict[str, str]:
    """email -> delivery status."""
    with ctx.db.read() as session:
        rows = session.execute(
            select(Subscriber.email, Delivery.status)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(Delivery.issue_id == issue_id)
        ).all()
    return {email: DeliveryStatus(status).value for email, status in rows}


def issue_row(ctx: Context, issue_id: int) -> Issue:
    with ctx.db.read() as session:
        issue = session.get(Issue, issue_id)
        assert issue is not None
        session.expunge(issue)  # keep the loaded values after the read ends
        return issue


def counts(received: Iterable[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in received:
        for r in m.rcpt_tos:
            out[r] = out.get(r, 0) + 1
    return out


class FaultHandler(RecordingHandler):
    """Configurable faults, decided per recipient and per attempt.

    ``bounce``: 550 5.1.1 always; ``greylist``: 451 on the first ``grey_times`` tries;
    ``policy``: 554 5.7.1 for these; ``fail``: 554 5.6.0 (content) at DATA;
    ``drop_every``: 421 and hang up on every n-th DATA; ``stall``: the first RCPT for
    these addresses sleeps ``stall_seconds`` (longer than the client's timeout).
    """

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.bounce: set[str] = set(options.get("bounce", ()))
        self.greylist: set[str] = set(options.get("greylist", ()))
        self.grey_times: int = options.get("grey_times", 1)
        self.policy: set[str] = set(options.get("policy", ()))
        self.fail: set[str] = set(options.get("fail", ()))
        self.drop_every: int = options.get("drop_every", 0)
        self.stall: set[str] = set(options.get("stall", ()))
        self.stall_seconds: float = options.get("stall_seconds", 2.0)
        self.lean: bool = options.get("lean", False)  # keep headers only (big runs)
        self.tries: dict[str, int] = {}
        self.datas = 0
        self.drops = 0
        self.guard = threading.Lock()

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        with self.guard:
            self.tries[address] = self.tries.get(address, 0) + 1
            attempt = self.tries[address]
        if address in self.stall and attempt == 1:
            await asyncio.sleep(self.stall_seconds)
            return "451 4.4.2 too slow"
        return await super().handle_RCPT(server, session, envelope, address, options)

    def rcpt_reply(self, address: str) -> str:
        if address in self.bounce:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if address in self.policy:
            return "554 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using zen"
        if address in self.greylist and self.tries[address] <= self.grey_times:
            return "451 4.7.1 Greylisted, please try again later"
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.guard:
            self.datas += 1
            drop = self.drop_every and self.datas % self.drop_every == 0
        if drop:
            self.drops += 1
            server.transport.close()
            return "421 4.3.2 Service shutting down"
        if set(envelope.rcpt_tos) & self.fail:
            return "554 5.6.0 Message content rejected"
        if self.lean:
            data = envelope.original_content or envelope.content
            assert isinstance(data, bytes)
            head = data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
            with self.lock:
                self.messages.append(
                    Received(str(envelope.mail_from), list(envelope.rcpt_tos), head)
                )
            return "250 2.0.0 Ok: queued"
        return await super().handle_DATA(server, session, envelope)


FROM = "news@example.com"


def sample(to: str = "reader@example.org", body: str = "Hello") -> bytes:
    """A minimal valid message for transport-level tests."""
    return (
        f"From: {FROM}\r\nTo: {to}\r\nSubject: test\r\nMessage-ID: <1@example.com>\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    ).encode()
