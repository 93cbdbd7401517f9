"""End to end: send through a real SMTP server, bounce what was sent, scan, check the ledger."""

from __future__ import annotations

import json
import mailbox
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _bounce_support import arf_for, dsn_for, maildir, out_of_office
from _delivery_support import add_subscribers, email_for, make_issue
from click.testing import CliRunner
from conftest import Received, SMTPServer
from sqlalchemy import func, select

from newsletter import delivery
from newsletter import subscribers as subs
from newsletter.bounces.scan import scan
from newsletter.bounces.verp import TagSigner, tag_from_address
from newsletter.cli import main
from newsletter.config import Settings
from newsletter.context import Context
from newsletter.delivery import ledger
from newsletter.models import (
    BounceEvent,
    BounceType,
    Delivery,
    DeliveryStatus,
    Subscriber,
    SubscriberStatus,
)
from newsletter.subscribers.csvio import apply_import, parse_csv

BOUNCES = "bounces@example.com"


@pytest.fixture
def verp_ctx(make_settings: Callable[..., Settings], smtp_server: SMTPServer) -> Iterator[Context]:
    context = Context.open(
        make_settings(NEWSLETTER_SMTP_URL=smtp_server.url, NEWSLETTER_BOUNCE_ADDRESS=BOUNCES)
    )
    yield context
    context.close()


def _send(ctx: Context, smtp: SMTPServer, n: int = 3, start: int = 0) -> tuple[int, list[Received]]:
    if start == 0:
        add_subscribers(ctx, n)
    before = len(smtp.messages)
    issue_id = make_issue(ctx, subject=f"Stories {start}")
    assert delivery.send_issue(ctx, issue_id).ok
    sent = sorted(smtp.messages[before:], key=lambda m: m.rcpt_tos[0])
    return issue_id, sent


def _subscriber(ctx: Context, address: str) -> Subscriber:
    with ctx.db.read() as session:
        row = session.scalars(select(Subscriber).where(Subscriber.email == address)).one()
        session.expunge(row)
        return row


def _delivery(ctx: Context, issue_id: int, address: str) -> Delivery:
    sid = _subscriber(ctx, address).id
    with ctx.db.read() as session:
        row = session.get(Delivery, (issue_id, sid))
        assert row is not None
        session.expunge(row)
        return row


def test_verp_mail_from_tag_header_and_feedback_id(
    verp_ctx: Context, smtp_server: SMTPServer
) -> None:
    issue_id, sent = _send(verp_ctx, smtp_server)
    signer = TagSigner(verp_ctx.secret_key)
    for i, received in enumerate(sent):
        sid = _subscriber(verp_ctx, email_for(i)).id
        tag = tag_from_address(received.envelope_from)
        assert received.envelope_from == f"bounces+{tag}@example.com"
        assert tag is not None and signer.read(tag) == (issue_id, sid)
        assert received.message["X-Newsletter-Tag"] == tag
        assert email_for(i) not in received.envelope_from
        assert received.message["Feedback-ID"] == f"{issue_id}:manual:the-daily-digest:example.com"
    assert len({m.envelope_from for m in sent}) == len(sent)


def test_without_bounce_address_mail_from_is_from(
    ctx: Context, make_settings: Callable[..., Settings], smtp_server: SMTPServer
) -> None:
    plain = Context.open(make_settings(NEWSLETTER_SMTP_URL=smtp_server.url))
    try:
        _, sent = _send(plain, smtp_server, n=2)
    finally:
        plain.close()
    assert {m.envelope_from for m in sent} == {"news@example.com"}
    assert all(m.message["X-Newsletter-Tag"] for m in sent)  # still tagged for quoted bounces


def test_dsn_to_the_verp_address_bounces_a_sent_delivery(
    verp_ctx: Context, smtp_server: SMTPServer, tmp_path: Path
) -> None:
    issue_id, sent = _send(verp_ctx, smtp_server)
    # reader 0: DSN to the VERP address, no quoted headers at all
    # reader 1: a relay rewrote the envelope (DSN to the bare address) but it quotes ours
    box = maildir(
        tmp_path / "Maildir",
        [dsn_for(sent[0], quote=False), dsn_for(sent[1], to=BOUNCES)],
    )
    lines: list[dict[str, object]] = []
    summary = scan(verp_ctx, [str(box)], on_line=lambda line: lines.append(line.as_json()))
    assert summary.messages == 2
    for i in (0, 1):
        assert _subscriber(verp_ctx, email_for(i)).status is SubscriberStatus.BOUNCED
        row = _delivery(verp_ctx, issue_id, email_for(i))
        assert row.status is DeliveryStatus.BOUNCED  # even though it had been sent
        assert (row.bounce_type, row.bounce_status) == (BounceType.HARD, "5.1.1")
    assert _subscriber(verp_ctx, email_for(2)).status is SubscriberStatus.ACTIVE
    assert {(line["issue"], line["type"]) for line in lines} == {(issue_id, "hard")}
    assert not list((box / "new").iterdir()) and len(list((box / "cur").iterdir())) == 2


def test_forged_tag_changes_nobody(
    verp_ctx: Context, smtp_server: SMTPServer, tmp_path: Path
) -> None:
    issue_id, sent = _send(verp_ctx, smtp_server)
    victim = _subscriber(verp_ctx, email_for(1)).id
    real = tag_from_address(sent[0].envelope_from)
    assert real is not None
    forged = real.rsplit("-", 2)[0] + f"-{victim:x}-" + real.rsplit("-", 1)[1]
    message = dsn_for(sent[1], to=f"bounces+{forged}@example.com", quote=False)
    lines: list[dict[str, object]] = []
    scan(
        verp_ctx,
        [str(maildir(tmp_path / "md", [message]))],
        on_line=lambda x: lines.append(x.as_json()),
    )
    assert lines[0]["subscriber"] is None and lines[0]["type"] == "hard"
    for i in range(3):
        assert _subscriber(verp_ctx, email_for(i)).status is SubscriberStatus.ACTIVE
    with verp_ctx.db.read() as session:
        event = session.scalars(select(BounceEvent)).one()
        assert event.action == "unmatched: forged tag" and event.subscriber_id is None
        assert ledger.counts(session, issue_id)[DeliveryStatus.SENT] == 3


def test_arf_complaint_suppresses_for_good(
    verp_ctx: Context, smtp_server: SMTPServer, tmp_path: Path
) -> None:
    _, sent = _send(verp_ctx, smtp_server)
    scan(verp_ctx, [str(maildir(tmp_path / "md", [arf_for(sent[2])]))])
    reader = _subscriber(verp_ctx, email_for(2))
    assert reader.status is SubscriberStatus.COMPLAINED and reader.complained_at is not None
    with verp_ctx.db.write() as session:  # an import never brings them back
        report = apply_import(
            session, parse_csv(f"email\n{email_for(2)}\n".encode()), confirmed=True
        )
    assert [(p.value, "spam" in p.reason) for p in report.skipped] == [(email_for(2), True)]
    assert _subscriber(verp_ctx, email_for(2)).status is SubscriberStatus.COMPLAINED
    _, again = _send(verp_ctx, smtp_server, start=1)  # never mailed again
    assert [m.rcpt_tos[0] for m in again] == [email_for(0), email_for(1)]


def test_out_of_office_and_delayed_are_ignored(
    verp_ctx: Context, smtp_server: SMTPServer, tmp_path: Path
) -> None:
    _, sent = _send(verp_ctx, smtp_server)
    box = maildir(
        tmp_path / "md",
        [out_of_office(sent[0]), dsn_for(sent[1], action="delayed", status="4.4.1")],
    )
    lines: list[dict[str, object]] = []
    scan(verp_ctx, [str(box)], on_line=lambda x: lines.append(x.as_json()))
    assert [line["type"] for line in lines] == ["autoreply", "none"]
    assert all(
        _subscriber(verp_ctx, email_for(i)).status is SubscriberStatus.ACTIVE for i in range(3)
    )


def test_soft_bounces_suppress_after_the_limit_from_different_issues(
    verp_ctx: Context, smtp_server: SMTPServer, tmp_path: Path
) -> None:
    soft = {"status": "5.2.2", "diagnostic": "552 5.2.2 <{rcpt}>: Mailbox full"}
    issue_id, sent = _send(verp_ctx, smtp_server, n=2)
    first = dsn_for(sent[0], **soft)
    scan(verp_ctx, [str(maildir(tmp_path / "a", [first, dsn_for(sent[0], **soft)]))])
    assert _subscriber(verp_ctx, email_for(0)).status is SubscriberStatus.ACTIVE  # same issue twice
    assert _delivery(verp_ctx, issue_id, email_for(0)).status is DeliveryStatus.SENT
    for n in (1, 2):
        _, more = _send(verp_ctx, smtp_server, start=n)
        scan(verp_ctx, [str(maildir(tmp_path / f"b{n}", [dsn_for(more[0], **soft)]))])
        expected = SubscriberStatus.BOUNCED if n == 2 else SubscriberStatus.ACTIVE
        assert _subscriber(verp_ctx, email_for(0)).status is expected
    assert _subscriber(verp_ctx, email_for(1)).status is SubscriberStatus.ACTIVE


def test_policy_bounce_recorded_on_issue_subscriber_untouched(
    verp_ctx: Context, smtp_server: SMTPServer, tmp_path: Path
) -> None:
    issue_id, sent = _send(verp_ctx, smtp_server)
    policy = {
        "status": "5.7.1",
        "diagnostic": "554 5.7.1 Client host blocked using zen.spamhaus.org",
    }
    scan(verp_ctx, [str(maildir(tmp_path / "md", [dsn_for(sent[0], **policy)]))])
    assert _subscriber(verp_ctx, email_for(0)).status is SubscriberStatus.ACTIVE
    row = _delivery(verp_ctx, issue_id, email_for(0))
    assert (row.status, row.bounce_type) == (DeliveryStatus.SENT, BounceType.POLICY)
    result = CliRunner().invoke(main, ["issues", "show", str(issue_id)], env=_cli_env(verp_ctx))
    assert result.exit_code == 0, result.output
    assert "Policy" in result.output and "blocked using zen.spamhaus.org" in result.output


def _cli_env(ctx: Context) -> dict[str, str]:
    s = ctx.settings
    return {
        "NEWSLETTER_DATABASE_URL": s.database_url,
        "NEWSLETTER_SECRET_KEY": ctx.secret_key,
        "NEWSLETTER_BOUNCE_ADDRESS": BOUNCES,
        "NEWSLETTER_FROM": "news@example.com",
    }


def test_rescanning_an_mbox_changes_nothing(
    verp_ctx: Context, smtp_server: SMTPServer, tmp_path: Path
) -> None:
    _, sent = _send(verp_ctx, smtp_server)
    path = tmp_path / "bounces.mbox"
    box = mailbox.mbox(path)
    for message in (dsn_for(sent[0]), arf_for(sent[1]), out_of_office(sent[2])):
        box.add(mailbox.mboxMessage(message))
    box.close()
    env = _cli_env(verp_ctx)
    first = CliRunner().invoke(main, ["bounces", "scan", "--json", str(path)], env=env)
    assert first.exit_code == 0, first.output
    rows = [json.loads(line) for line in first.stdout.splitlines()]
    assert [(r["source"], r["type"]) for r in rows] == [
        ("mbox:1", "hard"),
        ("mbox:2", "complaint"),
        ("mbox:3", "autoreply"),
    ]

    def state() -> tuple[object, ...]:
        with verp_ctx.db.read() as session:
            return (
                session.scalar(select(func.count()).select_from(BounceEvent)),
                tuple(session.execute(select(Subscriber.status, Subscriber.bounce_count)).all()),
                tuple(session.execute(select(Delivery.status, Delivery.bounce_type)).all()),
            )

    before = state()
    second = CliRunner().invoke(main, ["bounces", "scan", str(path)], env=env)
    assert second.exit_code == 0 and "3 seen before" in second.stderr
    assert state() == before
    listed = CliRunner().invoke(main, ["bounces", "list"], env=env)
    assert "subscriber complained" in listed.output and "3 event(s)" in listed.output


def test_dry_run_changes_nothing(
    verp_ctx: Context, smtp_server: SMTPServer, tmp_path: Path
) -> None:
    _, sent = _send(verp_ctx, smtp_server)
    box = maildir(tmp_path / "md", [dsn_for(sent[0])])
    result = CliRunner().invoke(
        main, ["bounces", "scan", "--dry-run", "--json", str(box)], env=_cli_env(verp_ctx)
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[0])["subscriber"] is not None
    assert _subscriber(verp_ctx, email_for(0)).status is SubscriberStatus.ACTIVE
    assert len(list((box / "new").iterdir())) == 1
    with verp_ctx.db.read() as session:
        assert session.scalar(select(func.count()).select_from(BounceEvent)) == 0


def test_new_user_journey_subscribers_list_shows_bounced(
    verp_ctx: Context, smtp_server: SMTPServer, tmp_path: Path
) -> None:
    _, sent = _send(verp_ctx, smtp_server, n=1)
    box = maildir(tmp_path / "Maildir", [dsn_for(sent[0])])
    env = _cli_env(verp_ctx)
    assert CliRunner().invoke(main, ["bounces", "scan", str(box)], env=env).exit_code == 0
    listed = CliRunner().invoke(main, ["subscribers", "list", "--status", "bounced"], env=env)
    assert email_for(0) in listed.output and "1 bounced subscriber" in listed.output
    exported = CliRunner().invoke(main, ["subscribers", "export"], env=env)
    assert f"{email_for(0)},Reader 0,bounced" in exported.output


def test_subscribers_list_status_complained(
    verp_ctx: Context, smtp_server: SMTPServer, tmp_path: Path
) -> None:
    _, sent = _send(verp_ctx, smtp_server, n=2)
    scan(verp_ctx, [str(maildir(tmp_path / "md", [arf_for(sent[1])]))])
    listed = CliRunner().invoke(
        main, ["subscribers", "list", "--status", "complained"], env=_cli_env(verp_ctx)
    )
    assert (
        listed.exit_code == 0
        and email_for(1) in listed.output
        and email_for(0) not in listed.output
    )


def test_erasure_removes_bounce_events_naming_the_person(
    verp_ctx: Context, smtp_server: SMTPServer, tmp_path: Path
) -> None:
    _, sent = _send(verp_ctx, smtp_server, n=2)
    unmatched = dsn_for(sent[0], to=BOUNCES, quote=False)  # no tag: recorded unmatched
    scan(verp_ctx, [str(maildir(tmp_path / "md", [dsn_for(sent[0]), unmatched, dsn_for(sent[1])]))])
    with verp_ctx.db.write() as session:
        subs.remove(session, email_for(0), erase=True)
    with verp_ctx.db.read() as session:
        left = session.scalars(select(BounceEvent.recipient)).all()
    assert left == [email_for(1)]
