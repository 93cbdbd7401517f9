"""Defences a mutation probe found untested (issue 16, finding 12), against real SMTP.

Each test fails when one line of the defence is changed: a 5.7.x pause must not
use up delivery attempts, ``retry-failed`` must give fresh attempts, one success
must reset the permanent-failure streak, the password must never go out in clear
text to a host that is not loopback.  (The classification mutants are covered by
``test_transport.test_classify``; X-Frame-Options by the web tests.)
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _delivery_support import FROM, FaultHandler, add_subscribers, email_for, make_issue, sample
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from conftest import RecordingHandler, SMTPServer, free_port, start_smtp
from sqlalchemy import select

from newsletter.config import Settings
from newsletter.context import Context
from newsletter.delivery import send as delivery
from newsletter.delivery.engine import FAILURE_STREAK
from newsletter.delivery.transport import Outcome, SMTPPool
from newsletter.models import Delivery, DeliveryStatus, IssueStatus

FAST = {"NEWSLETTER_RETRY_BASE_SECONDS": "0.05", "NEWSLETTER_BATCH_SIZE": "7"}


@pytest.fixture
def open_ctx(open_context: Callable[..., Context]) -> Callable[..., Context]:
    return lambda **overrides: open_context(**{**FAST, **overrides})


@pytest.fixture
def faulty() -> Iterator[Callable[..., SMTPServer]]:
    servers: list[SMTPServer] = []

    def start(**options: object) -> SMTPServer:
        server = start_smtp(FaultHandler(**options))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.controller.stop()


def attempts(ctx: Context, issue_id: int) -> dict[str, tuple[str, int]]:
    from newsletter.models import Subscriber

    with ctx.db.read() as session:
        rows = session.execute(
            select(Subscriber.email, Delivery.status, Delivery.attempts)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(Delivery.issue_id == issue_id)
        ).all()
    return {email: (str(status), int(n)) for email, status, n in rows}


def test_a_policy_pause_uses_up_no_attempts(
    open_ctx: Callable[..., Context], faulty: Callable[..., SMTPServer]
) -> None:
    server = faulty(policy={email_for(i) for i in range(3)})
    ctx = open_ctx(NEWSLETTER_SMTP_URL=server.url, NEWSLETTER_SMTP_CONNECTIONS="1")
    add_subscribers(ctx, 3)
    issue_id = make_issue(ctx)
    summary = delivery.send_issue(ctx, issue_id)
    assert summary.status is IssueStatus.PAUSED
    rows = attempts(ctx, issue_id)
    assert rows and all(status == DeliveryStatus.QUEUED for status, _ in rows.values())
    assert all(n == 0 for _, n in rows.values()), rows  # the reader did nothing wrong


def test_retry_failed_gives_fresh_attempts(
    open_ctx: Callable[..., Context], faulty: Callable[..., SMTPServer]
) -> None:
    server = faulty(fail={email_for(1)})
    ctx = open_ctx(NEWSLETTER_SMTP_URL=server.url)
    add_subscribers(ctx, 2)
    issue_id = make_issue(ctx)
    delivery.send_issue(ctx, issue_id)
    assert attempts(ctx, issue_id)[email_for(1)] == (DeliveryStatus.FAILED, 1)
    server.handler.fail.clear()  # type: ignore[attr-defined]  # the content was fixed
    assert delivery.retry_failed(ctx, issue_id).ok
    # Fresh attempts: this is its first try of the new round, not its second.
    assert attempts(ctx, issue_id)[email_for(1)] == (DeliveryStatus.SENT, 1)


def test_one_success_resets_the_permanent_failure_streak(
    open_ctx: Callable[..., Context], faulty: Callable[..., SMTPServer]
) -> None:
    # 19 refused, 1 accepted, 19 refused, 1 accepted: never 20 refusals in a row.
    n = FAILURE_STREAK - 1
    refused = {email_for(i) for i in range(2 * (n + 1)) if i % (n + 1) != n}
    server = faulty(fail=refused)
    ctx = open_ctx(NEWSLETTER_SMTP_URL=server.url, NEWSLETTER_SMTP_CONNECTIONS="1")
    add_subscribers(ctx, 2 * (n + 1))
    issue_id = make_issue(ctx)
    summary = delivery.send_issue(ctx, issue_id)
    assert summary.status is IssueStatus.SENT, summary.reason
    assert summary.counts[DeliveryStatus.FAILED] == 2 * n
    assert summary.counts[DeliveryStatus.SENT] == 2


def _public_address() -> str | None:
    """An address of this machine that is not loopback (None when it has none)."""
    candidates: list[str] = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: it only picks a route
            candidates.append(probe.getsockname()[0])
    except OSError:
        pass
    with contextlib.suppress(OSError):
        candidates += socket.gethostbyname_ex(socket.gethostname())[2]
    return next((a for a in candidates if not a.startswith("127.")), None)


def test_no_password_in_clear_text_to_a_host_that_is_not_loopback(
    make_settings: Callable[..., Settings],
) -> None:
    address = _public_address()
    if address is None:
        message = "this machine has no non-loopback IPv4 address to listen on"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    seen: list[Any] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        seen.append(data)
        return AuthResult(success=True, handled=False)

    handler = RecordingHandler()
    controller = Controller(
        handler,
        hostname=address,
        port=free_port(),
        authenticator=authenticator,
        auth_require_tls=False,  # the server would take it: we must not offer it
    )
    controller.start()
    try:
        pool = SMTPPool(make_settings(), f"smtp://user:secret@{address}:{controller.port}")
        out = pool.send(FROM, "a@example.org", sample())
        pool.close()
    finally:
        controller.stop()
    assert out.outcome is Outcome.POLICY and "clear text" in out.response
    assert seen == [] and handler.messages == []


def test_exactly_the_streak_of_permanent_refusals_pauses(
    open_ctx: Callable[..., Context], faulty: Callable[..., SMTPServer]
) -> None:
    # FAILURE_STREAK refusals in a row, then readers who would be accepted: paused
    # at the streak (messages already in flight may still go out).
    server = faulty(fail={email_for(i) for i in range(FAILURE_STREAK)})
    ctx = open_ctx(NEWSLETTER_SMTP_URL=server.url, NEWSLETTER_SMTP_CONNECTIONS="1")
    add_subscribers(ctx, FAILURE_STREAK + 40)
    issue_id = make_issue(ctx)
    summary = delivery.send_issue(ctx, issue_id)
    assert summary.status is IssueStatus.PAUSED, summary.reason
    assert f"{FAILURE_STREAK} messages in a row refused permanently" in (summary.reason or "")
    assert summary.counts[DeliveryStatus.SENT] < 40  # stopped, not run to the end
