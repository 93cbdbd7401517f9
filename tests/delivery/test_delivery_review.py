"""Review findings on the delivery engine: each test failed before its fix.

Real aiosmtpd servers, real SQLite files, click's runner; no mocks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from _delivery_support import FROM, add_subscribers, email_for, make_issue, sample, statuses
from aiosmtpd.smtp import AuthResult, LoginPassword
from click.testing import CliRunner
from conftest import RecordingHandler, SMTPServer
from sqlalchemy import event
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql import Select

from newsletter.cli import main
from newsletter.cli.sendview import Unfinished, show_summary
from newsletter.config import Settings
from newsletter.context import Context
from newsletter.delivery import ledger
from newsletter.delivery import send as delivery
from newsletter.delivery.transport import Outcome, SMTPPool
from newsletter.models import DeliveryStatus, IssueStatus, utcnow

# -- an unexpected positive reply to RCPT must not count as delivered --------------------


class CannotVerify(RecordingHandler):
    """``252`` to RCPT (a VRFY reply, not a RCPT one): the recipient is not taken."""

    pipelining = False

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            return [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    def rcpt_reply(self, address: str) -> str:
        if address.startswith("odd@"):
            return "252 2.1.5 Cannot VRFY user, but will accept message"
        return "250 OK"


@pytest.mark.parametrize("pipelining", [True, False])
def test_unexpected_2xx_to_rcpt_is_not_marked_sent(
    servers: Callable[..., SMTPServer], make_settings: Callable[..., Settings], pipelining: bool
) -> None:
    handler = CannotVerify()
    handler.pipelining = pipelining
    server = servers(handler)
    pool = SMTPPool(make_settings(), server.url)
    try:
        odd = pool.send(FROM, "odd@example.org", sample("odd@example.org"))
        ok = pool.send(FROM, "ok@example.org", sample("ok@example.org"))
    finally:
        pool.close()
    assert [m.rcpt_tos for m in server.messages] == [["ok@example.org"]]
    assert odd.outcome is not Outcome.SENT, odd  # nothing was delivered to odd@
    assert odd.outcome is Outcome.RETRY and odd.code == 252
    assert ok.outcome is Outcome.SENT


# -- AUTH with percent-decoded non-ASCII credentials -----------------------------------


USER, PASSWORD = "josé@example.com", "pässwörd €"


def _utf8_authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_utf8_credentials_log_in(
    servers: Callable[..., SMTPServer], make_settings: Callable[..., Settings], mechanism: str
) -> None:
    other = "LOGIN" if mechanism == "PLAIN" else "PLAIN"
    server = servers(
        authenticator=_utf8_authenticator,
        auth_require_tls=False,
        auth_required=True,
        auth_exclude_mechanism=[other],
    )
    url = (
        f"smtp://jos%C3%A9%40example.com:p%C3%A4ssw%C3%B6rd%20%E2%82%AC"
        f"@127.0.0.1:{server.controller.port}"
    )
    pool = SMTPPool(make_settings(), url)
    try:
        out = pool.send(FROM, "a@example.org", sample("a@example.org"))
    finally:
        pool.close()
    assert out.outcome is Outcome.SENT, out
    assert len(server.messages) == 1
    wrong = SMTPPool(make_settings(), url.replace("%E2%82%AC", "x"))
    try:
        out = wrong.send(FROM, "a@example.org", sample("a@example.org"))
    finally:
        wrong.close()
    assert out.outcome is Outcome.POLICY and out.code == 535


# -- no SMTP command injection through an address ---------------------------------------


def test_line_breaks_in_an_address_are_refused_not_sent(
    smtp_server: SMTPServer, make_settings: Callable[..., Settings]
) -> None:
    pool = SMTPPool(make_settings(), smtp_server.url)
    try:
        evil = "a@example.org>\r\nRCPT TO:<intruder@example.net"
        out = pool.send(FROM, evil, sample())
        bad_from = pool.send(
            "x@example.com>\r\nRSET\r\nMAIL FROM:<y@example.com", "b@example.org", sample()
        )
        after = pool.send(FROM, "c@example.org", sample("c@example.org"))
    finally:
        pool.close()
    assert out.outcome is Outcome.FAILED and "control characters" in out.response
    assert bad_from.outcome is Outcome.FAILED
    assert after.outcome is Outcome.SENT
    assert [m.rcpt_tos for m in smtp_server.messages] == [["c@example.org"]]


# -- claiming a batch locks the rows it claims (FOR UPDATE SKIP LOCKED on PostgreSQL) ----


def test_claim_selects_rows_for_update_skip_locked(ctx: Context) -> None:
    add_subscribers(ctx, 5)
    issue_id = make_issue(ctx)
    selects: list[Select[Any]] = []

    def capture(conn: Any, clause: Any, *args: Any) -> None:
        if isinstance(clause, Select) and "deliveries" in str(clause):
            selects.append(clause)

    event.listen(ctx.db.engine, "before_execute", capture)
    try:
        me = ledger.Claimant("here:1:abc", utcnow() + timedelta(minutes=1))
        with ctx.db.write() as session:
            claim = ledger.claim_next(session, issue_id, 0, 3, me)
        with ctx.db.write() as session:
            retry = ledger.claim_ids(session, issue_id, [claim.jobs[0].subscriber_id + 3], me)
    finally:
        event.remove(ctx.db.engine, "before_execute", capture)
    assert len(claim.jobs) == 3 and len(retry.jobs) == 1  # SQLite: the same rows as before
    claims = [s for s in selects if "subscribers" in str(s)]
    assert len(claims) == 2
    for statement in claims:
        sql = str(statement.compile(dialect=postgresql.dialect()))
        assert "FOR UPDATE OF deliveries SKIP LOCKED" in sql, sql


# -- a send cancelled from elsewhere: the summary does not tell to resume it ------------


def test_cancelled_mid_send_does_not_advise_resume(
    make_settings: Callable[..., Settings],
) -> None:
    ctx = Context.open(make_settings(NEWSLETTER_BATCH_SIZE="5"))
    add_subscribers(ctx, 30)
    issue_id = make_issue(ctx)
    done = threading.Event()

    class Outbox:
        concurrency = 1
        description = "cancelling sink"

        def __init__(self) -> None:
            self.sent: list[str] = []

        def send(self, envelope_from: str, recipient: str, data: bytes) -> Any:
            from newsletter.delivery.transport import SendOutcome

            self.sent.append(recipient)
            if not done.is_set():
                done.set()
                with ctx.db.write() as session:  # another terminal: issues cancel
                    delivery.cancel(session, issue_id)
            return SendOutcome(Outcome.SENT, 250, "ok")

        def close(self) -> None:
            pass

    try:
        summary = delivery.send_issue(ctx, issue_id, transport=Outbox())
        final = statuses(ctx, issue_id)
    finally:
        ctx.close()
    assert summary.status is IssueStatus.CANCELLED
    assert summary.left_queued > 0
    assert summary.counts[DeliveryStatus.SENT] >= 1
    with pytest.raises(Unfinished) as raised:
        show_summary(summary)
    message = raised.value.message
    assert "cancelled" in message
    assert "issues resume" not in message  # resume refuses a cancelled issue
    assert set(final.values()) == {"sent", "queued"} and email_for(29) in final


# -- send --to --dry-run sends nothing --------------------------------------------------


def test_test_copy_with_dry_run_sends_nothing(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, smtp_server: SMTPServer
) -> None:
    from pathlib import Path

    from newsletter.config import load_settings
    from newsletter.stories.store import import_sources

    feed = Path(__file__).resolve().parents[2] / "newsletter" / "examples" / "stories.xml"
    ctx = Context.open(load_settings(dotenv_path=None))
    try:
        with ctx.db.write() as session:
            assert import_sources(session, [str(feed)], feature=True).ok
    finally:
        ctx.close()
    monkeypatch.setenv("NEWSLETTER_SMTP_URL", smtp_server.url)
    result = CliRunner().invoke(
        main, ["send", "--to", "editor@example.com", "--dry-run"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "Dry run" in result.output
    assert smtp_server.messages == []


# -- issues cancel takes effect within the flush interval, not after a 500-row batch -----


def test_cancel_stops_the_sender_within_its_window(ctx: Context) -> None:
    import time

    from newsletter.delivery.transport import SendOutcome

    add_subscribers(ctx, 120)
    issue_id = make_issue(ctx)  # default batch size: all 120 rows claimed at once
    cancelled = threading.Event()

    class SlowSink:
        concurrency = 1
        description = "slow sink"
        sent = 0

        def send(self, envelope_from: str, recipient: str, data: bytes) -> SendOutcome:
            time.sleep(0.01)
            self.sent += 1
            if self.sent == 5:
                with ctx.db.write() as session:  # `newsletter issues cancel` elsewhere
                    delivery.cancel(session, issue_id)
                cancelled.set()
            return SendOutcome(Outcome.SENT, 250, "ok")

        def close(self) -> None:
            pass

    sink = SlowSink()
    summary = delivery.send_issue(ctx, issue_id, transport=sink)
    assert cancelled.is_set() and summary.status is IssueStatus.CANCELLED
    # noticed at the next flush (0.1 s): about the window (16) plus ~10 more
    assert sink.sent < 60, sink.sent  # was all 120: the batch ran to its end
    assert summary.counts[DeliveryStatus.SENT] == sink.sent
    assert summary.left_queued == 120 - sink.sent


# -- RFC 5321 4.5.3.2.6: wait (up to 10 minutes) for the reply to the end of DATA ---------


class SlowToConfirm(RecordingHandler):
    """Keeps the message, then takes longer than the command timeout to say 250."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        import asyncio

        reply = await super().handle_DATA(server, session, envelope)
        await asyncio.sleep(1.2)
        return reply


def test_slow_reply_to_end_of_data_is_not_a_retry(
    servers: Callable[..., SMTPServer], make_settings: Callable[..., Settings]
) -> None:
    server = servers(SlowToConfirm())
    pool = SMTPPool(make_settings(NEWSLETTER_SMTP_TIMEOUT="0.5"), server.url)
    try:
        out = pool.send(FROM, "a@example.org", sample("a@example.org"))
    finally:
        pool.close()
    # a timeout here would retry a message the server already took: a duplicate
    assert out.outcome is Outcome.SENT, out
    assert len(server.messages) == 1


# -- demo: the preview is of the digest just sent, not of an older file in the outbox ------


def test_demo_previews_the_message_it_just_sent(
    make_settings: Callable[..., Settings], tmp_path: Any
) -> None:
    import os

    from newsletter.delivery.outbox import MaildirOutbox
    from newsletter.demo import run_demo

    settings = make_settings()
    old = MaildirOutbox(settings.outbox)  # a message from an earlier day's run
    old.send(
        FROM,
        "ada.reader@example.com",
        b"Subject: yesterday\r\nContent-Type: text/html\r\n\r\n<html>yesterday's news</html>\r\n",
    )
    old.close()
    [stale] = list((settings.outbox / "new").iterdir())
    os.utime(stale, (1_000_000_000, 1_000_000_000))
    result = run_demo(settings, tmp_path / "preview.html")
    assert result.summary is not None and result.summary.run.sent == 4
    assert result.preview is not None
    html = result.preview.read_text(encoding="utf-8")
    assert "yesterday's news" not in html and "tram depot" in html
