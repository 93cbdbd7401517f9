"""The daily quota: NEWSLETTER_DAILY_LIMIT across issues and days, and relays' own refusals."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import time_machine
from _delivery_support import add_subscribers, make_issue, statuses
from click.testing import CliRunner
from conftest import RecordingHandler, SMTPServer
from sqlalchemy import select

from newsletter import delivery
from newsletter.cli import main
from newsletter.context import Context
from newsletter.delivery import quota
from newsletter.delivery.transport import Outcome, classify
from newsletter.models import Delivery, IssueStatus, Subscriber, SubscriberStatus
from newsletter.timetable import jobs

PARIS = {"NEWSLETTER_TIMEZONE": "Europe/Paris", "NEWSLETTER_RETRY_BASE_SECONDS": "0.05"}
# 22:30 in Paris (21:30 UTC) on day one; 00:10 in Paris on day two is 23:10 UTC.
DAY_ONE = datetime(2026, 3, 10, 21, 30, tzinfo=UTC)
DAY_TWO = datetime(2026, 3, 10, 23, 10, tzinfo=UTC)


@pytest.fixture
def open_ctx(make_settings: Callable[..., Any]) -> Iterator[Callable[..., Context]]:
    opened: list[Context] = []

    def factory(**overrides: str) -> Context:
        c = Context.open(make_settings(**{**PARIS, **overrides}))
        opened.append(c)
        return c

    yield factory
    for c in opened:
        c.close()


def _by_status(ctx: Context, issue_id: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for status in statuses(ctx, issue_id).values():
        out[status] = out.get(status, 0) + 1
    return out


def test_daily_limit_is_exact_across_two_issues_and_continues_tomorrow(
    open_ctx: Callable[..., Context], smtp_server: SMTPServer
) -> None:
    ctx = open_ctx(
        NEWSLETTER_SMTP_URL=smtp_server.url, NEWSLETTER_DAILY_LIMIT="25", NEWSLETTER_BATCH_SIZE="7"
    )
    add_subscribers(ctx, 15)
    with time_machine.travel(DAY_ONE, tick=True):
        first = delivery.send_issue(ctx, make_issue(ctx, "Monday"))
        assert first.ok and first.run.sent == 15
        second_id = make_issue(ctx, "Monday, later")
        second = delivery.send_issue(ctx, second_id)
        assert second.run.sent == 10 and second.until_tomorrow
        assert second.status is IssueStatus.SENDING and second.left_queued == 5
        assert "until tomorrow" in (second.reason or "")
        assert len(smtp_server.messages) == 25  # exactly the quota, never more
        upkeep = jobs.run_upkeep(ctx)  # upkeep the same evening sends nothing more
        assert [s.run.sent for s in upkeep.resumed] == [0]
        assert len(smtp_server.messages) == 25
        with ctx.db.read() as session:
            assert quota.used_today(session, ctx.settings) == 25
            assert quota.allowance(session, ctx.settings, 10).count == 0
    with time_machine.travel(DAY_TWO, tick=True):  # just past midnight in Paris
        upkeep = jobs.run_upkeep(ctx)
        assert [s.run.sent for s in upkeep.resumed] == [5]
        assert upkeep.resumed[0].ok
    assert _by_status(ctx, second_id) == {"sent": 15}
    assert len(smtp_server.messages) == 30
    with ctx.db.read() as session:
        attempts = set(
            session.scalars(select(Delivery.attempts).where(Delivery.issue_id == second_id))
        )
    assert attempts == {1}  # waiting for tomorrow used no attempt


def test_send_and_issues_show_say_until_tomorrow(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, smtp_server: SMTPServer
) -> None:
    from pathlib import Path

    from newsletter.config import load_settings
    from newsletter.stories import import_sources

    monkeypatch.setenv("NEWSLETTER_SMTP_URL", smtp_server.url)
    monkeypatch.setenv("NEWSLETTER_DAILY_LIMIT", "3")
    feed = Path(__file__).resolve().parents[2] / "newsletter" / "examples" / "stories.xml"
    ctx = Context.open(load_settings(dotenv_path=None))
    try:
        with ctx.db.write() as session:
            assert import_sources(session, [str(feed)], feature=True).ok
        add_subscribers(ctx, 5)
    finally:
        ctx.close()
    runner = CliRunner()
    sent = runner.invoke(main, ["send", "--yes"], catch_exceptions=False)
    assert sent.exit_code == 1
    assert "3 go today, 2 stay queued until tomorrow" in sent.output  # said before sending
    assert "2 deliveries stay queued until tomorrow" in sent.output
    assert "daily limit of 3 messages reached" in sent.output
    assert len(smtp_server.messages) == 3
    shown = runner.invoke(main, ["issues", "show", "1"], catch_exceptions=False)
    assert shown.exit_code == 0
    assert "2 queued until tomorrow" in shown.output
    assert "Daily limit: 3 of 3 used today" in shown.output


class QuotaRefusal(RecordingHandler):
    """A relay whose daily quota is used up: answers ``reply`` at ``stage``, counts tries."""

    def __init__(self, reply: str, stage: str) -> None:
        super().__init__()
        self.reply, self.stage, self.tries = reply, stage, 0

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.stage == "mail":
            self.tries += 1
            return self.reply
        envelope.mail_from = address
        return "250 OK"

    def rcpt_reply(self, address: str) -> str:
        if self.stage == "rcpt":
            self.tries += 1
            return self.reply
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.stage == "data":
            self.tries += 1
            return self.reply
        return await super().handle_DATA(server, session, envelope)


REFUSALS = [
    ("421 4.7.0 Try again later, closing connection. Daily sending quota exceeded.", "mail"),
    (
        "550 5.4.5 Daily user sending quota exceeded. https://support.google.com/a/answer/166852",
        "mail",
    ),
    ("454 Throttling failure: Daily message quota exceeded.", "data"),
    ("554 Message rejected: Sending quota exceeded.", "data"),
    (
        "550 5.1.90 Your message can't be sent because you've reached your daily limit "
        "for message recipients",
        "rcpt",
    ),
    ("451 4.7.1 Daily sending limit reached for this account, try again tomorrow", "rcpt"),
]


@pytest.mark.parametrize(("reply", "stage"), REFUSALS)
def test_relay_quota_refusal_waits_for_tomorrow(
    open_ctx: Callable[..., Context], servers: Callable[..., SMTPServer], reply: str, stage: str
) -> None:
    handler = QuotaRefusal(reply, stage)
    server = servers(handler)
    ctx = open_ctx(NEWSLETTER_SMTP_URL=server.url, NEWSLETTER_SMTP_CONNECTIONS="1")
    add_subscribers(ctx, 4)
    with time_machine.travel(DAY_ONE, tick=True):
        issue_id = make_issue(ctx)
        summary = delivery.send_issue(ctx, issue_id)
        assert summary.until_tomorrow and summary.status is IssueStatus.SENDING  # not paused
        assert summary.run.failed == summary.run.bounced == 0
        assert "until tomorrow" in (summary.reason or "")
        assert _by_status(ctx, issue_id) == {"queued": 4}
        with ctx.db.read() as session:
            rows = session.execute(
                select(Delivery.attempts, Delivery.last_code).where(Delivery.issue_id == issue_id)
            ).all()
            assert {a for a, _ in rows} == {0}  # not counted as an attempt
            subscriber_states = set(session.scalars(select(Subscriber.status)))
        assert subscriber_states == {SubscriberStatus.ACTIVE}  # nobody bounced (5.1.90!)
        tries = handler.tries
        again = delivery.send_issue(ctx, issue_id)  # the same day: the relay is not asked again
        assert again.run.sent == 0 and again.until_tomorrow and handler.tries == tries
    handler.reply = "250 OK"
    handler.stage = "none"
    with time_machine.travel(DAY_TWO, tick=True):
        upkeep = jobs.run_upkeep(ctx)
        assert [s.run.sent for s in upkeep.resumed] == [4]
    assert _by_status(ctx, issue_id) == {"sent": 4}


@pytest.mark.parametrize(("reply", "_stage"), REFUSALS)
def test_quota_texts_classify_as_quota(reply: str, _stage: str) -> None:
    code, _, text = reply.partition(" ")
    assert classify(int(code), text, "rcpt") is Outcome.QUOTA


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (452, "4.2.2 The email account that you tried to reach is over quota", Outcome.RETRY),
        (552, "5.2.2 Mailbox full: user quota exceeded", Outcome.BOUNCE),
        (421, "4.7.0 Too many connections, slow down", Outcome.RETRY),
    ],
)
def test_a_readers_full_mailbox_is_not_our_quota(code: int, text: str, expected: Outcome) -> None:
    assert classify(code, text, "rcpt") is expected


def test_resume_by_hand_asks_the_relay_again(
    open_ctx: Callable[..., Context], servers: Callable[..., SMTPServer]
) -> None:
    handler = QuotaRefusal("550 5.4.5 Daily user sending quota exceeded", "mail")
    server = servers(handler)
    ctx = open_ctx(NEWSLETTER_SMTP_URL=server.url)
    add_subscribers(ctx, 3)
    issue_id = make_issue(ctx)
    assert delivery.send_issue(ctx, issue_id).until_tomorrow
    handler.stage = "none"  # the operator raised the quota
    summary = delivery.resume(ctx, issue_id)
    assert summary.ok and summary.run.sent == 3


def test_the_day_starts_at_local_midnight_also_on_a_dst_day() -> None:
    from newsletter.config import Settings

    settings = Settings(timezone="Europe/Paris")
    # 29 March 2026: clocks go forward at 02:00; 00:30 UTC is 01:30 CET, 23:30 UTC is 01:30 CEST
    assert quota.day_start(settings, datetime(2026, 3, 29, 0, 30, tzinfo=UTC)).astimezone(
        UTC
    ) == datetime(2026, 3, 28, 23, 0, tzinfo=UTC)
    assert quota.day_start(settings, datetime(2026, 3, 29, 23, 30, tzinfo=UTC)).astimezone(
        UTC
    ) == datetime(2026, 3, 29, 22, 0, tzinfo=UTC)
