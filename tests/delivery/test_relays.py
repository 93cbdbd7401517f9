"""Several relays: failover from a closed port, a 421 relay, failed AUTH; policy on the last."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest
from _delivery_support import FaultHandler, add_subscribers, make_issue, statuses
from click.testing import CliRunner
from conftest import RecordingHandler, SMTPServer, free_port

from newsletter import delivery
from newsletter.cli import main
from newsletter.context import Context
from newsletter.models import IssueStatus

FAST = {"NEWSLETTER_RETRY_BASE_SECONDS": "0.05", "NEWSLETTER_BATCH_SIZE": "7"}


@pytest.fixture
def open_ctx(open_context: Callable[..., Context]) -> Callable[..., Context]:
    return lambda **overrides: open_context(**{**FAST, **overrides})


class GreetsWith421:
    """A real TCP relay that greets every client with 421 and hangs up (overloaded)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.sendall(b"421 4.3.2 Service not available, closing transmission channel\r\n")

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.sock.close()


class MailAnswers421(RecordingHandler):
    """Greets fine, then answers every MAIL FROM with 421 (keeps answering it)."""

    def __init__(self) -> None:
        super().__init__()
        self.mails = 0

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.mails += 1
        return "421 4.7.0 Try again later, closing connection"


def _target(server: SMTPServer) -> str:
    return f"smtp://{server.controller.hostname}:{server.controller.port}"


def test_closed_port_then_a_real_relay_carries_the_send(
    open_ctx: Callable[..., Context], servers: Callable[..., SMTPServer]
) -> None:
    closed = f"smtp://127.0.0.1:{free_port()}"
    live = servers()
    ctx = open_ctx(NEWSLETTER_SMTP_URL=f"{closed},{live.url}")
    add_subscribers(ctx, 20)
    summary = delivery.send_issue(ctx, make_issue(ctx))
    assert summary.ok and summary.run.sent == 20
    assert len(live.messages) == 20
    assert summary.run.relays == {_target(live): 20}
    assert summary.run.retries == 0  # each message went on to the next relay at once


def test_a_relay_greeting_with_421_is_set_aside(
    open_ctx: Callable[..., Context], servers: Callable[..., SMTPServer]
) -> None:
    busy = GreetsWith421()
    try:
        live = servers()
        ctx = open_ctx(NEWSLETTER_SMTP_URL=f"{busy.url},{live.url}")
        add_subscribers(ctx, 15)
        summary = delivery.send_issue(ctx, make_issue(ctx))
        assert summary.ok and len(live.messages) == 15
        assert summary.run.relays == {_target(live): 15}
        assert 1 <= busy.connections <= 4  # tried, set aside, not hammered
    finally:
        busy.close()


def test_a_relay_that_keeps_answering_421_hands_over(
    open_ctx: Callable[..., Context], servers: Callable[..., SMTPServer]
) -> None:
    refusing = servers(MailAnswers421())
    live = servers()
    ctx = open_ctx(
        NEWSLETTER_SMTP_URL=f"{refusing.url},{live.url}", NEWSLETTER_SMTP_CONNECTIONS="1"
    )
    add_subscribers(ctx, 12)
    issue_id = make_issue(ctx)
    summary = delivery.send_issue(ctx, issue_id)
    assert summary.ok, summary
    assert set(statuses(ctx, issue_id).values()) == {"sent"}
    assert len(live.messages) == 12 and not refusing.messages
    assert isinstance(refusing.handler, MailAnswers421)
    assert refusing.handler.mails == 3  # the streak that set it aside, no more
    assert summary.run.retries == 2  # the first two 421s were retried (on the live relay)


def test_failed_auth_on_the_first_relay_fails_over(
    open_ctx: Callable[..., Context], servers: Callable[..., SMTPServer]
) -> None:
    no_auth = servers()  # offers no AUTH: login cannot succeed
    live = servers()
    first = f"smtp://user:secret@127.0.0.1:{no_auth.controller.port}"
    ctx = open_ctx(NEWSLETTER_SMTP_URL=f"{first},{live.url}")
    add_subscribers(ctx, 5)
    summary = delivery.send_issue(ctx, make_issue(ctx))
    assert summary.ok and len(live.messages) == 5 and not no_auth.messages


def test_policy_refusal_from_the_last_relay_pauses(
    open_ctx: Callable[..., Context], servers: Callable[..., SMTPServer]
) -> None:
    closed = f"smtp://127.0.0.1:{free_port()}"
    add_to = [f"reader{i:06d}@example.org" for i in range(5)]
    strict = servers(FaultHandler(policy=add_to))
    ctx = open_ctx(NEWSLETTER_SMTP_URL=f"{closed},{strict.url}")
    add_subscribers(ctx, 5)
    issue_id = make_issue(ctx)
    summary = delivery.send_issue(ctx, issue_id)
    assert summary.status is IssueStatus.PAUSED
    assert "5.7.1" in (summary.reason or "")
    assert set(statuses(ctx, issue_id).values()) == {"queued"}


def test_policy_refusal_from_the_first_relay_goes_to_the_next(
    open_ctx: Callable[..., Context], servers: Callable[..., SMTPServer]
) -> None:
    blocked = servers(FaultHandler(policy=[f"reader{i:06d}@example.org" for i in range(6)]))
    live = servers()
    ctx = open_ctx(NEWSLETTER_SMTP_URL=f"{blocked.url},{live.url}")
    add_subscribers(ctx, 6)
    summary = delivery.send_issue(ctx, make_issue(ctx))
    assert summary.ok and len(live.messages) == 6


def test_send_summary_says_which_relay_carried_how_many(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, servers: Callable[..., SMTPServer]
) -> None:
    from pathlib import Path

    from newsletter.config import load_settings
    from newsletter.stories import import_sources

    feed = Path(__file__).resolve().parents[2] / "newsletter" / "examples" / "stories.xml"
    live = servers()
    monkeypatch.setenv("NEWSLETTER_SMTP_URL", f"smtp://127.0.0.1:{free_port()},{live.url}")
    ctx = Context.open(load_settings(dotenv_path=None))
    try:
        with ctx.db.write() as session:
            assert import_sources(session, [str(feed)], feature=True).ok
        add_subscribers(ctx, 4)
    finally:
        ctx.close()
    result = CliRunner().invoke(main, ["send", "--yes"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "then smtp://127.0.0.1:" in result.output  # "Via:" lists both, in order
    assert f"Carried by {_target(live)}" in result.output
    line = next(x for x in result.output.splitlines() if "Carried by" in x)
    assert line.rstrip(" │|").split()[-1] == "4"
