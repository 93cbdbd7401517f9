"""``newsletter send``, ``issues ...`` and ``demo`` through click's runner."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from _delivery_support import (
    FaultHandler,
    add_subscribers,
    counts,
    email_for,
    make_issue,
)
from click.testing import CliRunner, Result
from conftest import SMTPServer, free_port, start_smtp
from sqlalchemy import select

from newsletter.cli import main
from newsletter.config import load_settings
from newsletter.context import Context
from newsletter.delivery import ledger
from newsletter.models import (
    Issue,
    IssueKind,
    IssueStatus,
    IssueStory,
    Story,
    utcnow,
)
from newsletter.stories.store import import_sources

EXAMPLE_FEED = Path(__file__).resolve().parents[2] / "newsletter" / "examples" / "stories.xml"


@pytest.fixture
def cli(cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    monkeypatch.setenv("NEWSLETTER_RETRY_BASE_SECONDS", "0.05")

    def invoke(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)

    return invoke


@pytest.fixture
def cli_ctx(cli_env: dict[str, str]) -> Iterator[Context]:
    """The database the CLI uses, with featured sample stories loaded."""
    ctx = Context.open(load_settings(dotenv_path=None))
    with ctx.db.write() as session:
        assert import_sources(session, [str(EXAMPLE_FEED)], feature=True).ok
    yield ctx
    ctx.close()


def use_smtp(monkeypatch: pytest.MonkeyPatch, server: SMTPServer) -> None:
    monkeypatch.setenv("NEWSLETTER_SMTP_URL", server.url)


def issues(ctx: Context) -> list[Issue]:
    with ctx.db.read() as session:
        rows = list(session.scalars(select(Issue).order_by(Issue.id)))
        for row in rows:
            session.expunge(row)
        return rows


def test_nothing_new_to_send_exits_zero(cli: Callable[..., Result]) -> None:
    result = cli("send", "--yes")
    assert result.exit_code == 0
    assert "Nothing new to send" in result.output


def test_dry_run_shows_and_records_nothing(
    cli: Callable[..., Result], cli_ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_subscribers(cli_ctx, 4)
    server = start_smtp()
    use_smtp(monkeypatch, server)
    try:
        result = cli("send", "--dry-run")
    finally:
        server.controller.stop()
    assert result.exit_code == 0, result.output
    assert "Stories (6)" in result.output
    assert "Millbrook's old tram depot reopens" in result.output
    assert "Recipients: 4 active subscribers" in result.output
    assert "Dry run" in result.output
    assert issues(cli_ctx) == [] and server.messages == []


def test_confirm_then_send_everyone(
    cli: Callable[..., Result],
    cli_ctx: Context,
    monkeypatch: pytest.MonkeyPatch,
    smtp_server: SMTPServer,
) -> None:
    add_subscribers(cli_ctx, 12)
    use_smtp(monkeypatch, smtp_server)
    refused = cli("send", input="n\n")
    assert refused.exit_code == 1 and "Aborted" in refused.output
    assert issues(cli_ctx) == [] and smtp_server.messages == []

    result = cli("send", input="y\n")
    assert result.exit_code == 0, result.output
    assert "Send this to 12 subscribers?" in result.output
    assert "Issue #1 is sent." in result.output
    assert "Sent" in result.output and "12" in result.output
    assert counts(smtp_server.messages) == {email_for(i): 1 for i in range(12)}
    [issue] = issues(cli_ctx)
    assert issue.status is IssueStatus.SENT and issue.kind is IssueKind.DIGEST
    msg = smtp_server.messages[0].message
    assert msg["Subject"] == issue.subject

    again = cli("send", "--yes")  # one digest a day
    assert again.exit_code == 0 and "already" in again.output
    assert len(smtp_server.messages) == 12


def test_test_copy_goes_to_one_address_only(
    cli: Callable[..., Result],
    cli_ctx: Context,
    monkeypatch: pytest.MonkeyPatch,
    smtp_server: SMTPServer,
) -> None:
    add_subscribers(cli_ctx, 3)
    use_smtp(monkeypatch, smtp_server)
    result = cli("send", "--to", "Editor@Example.COM")
    assert result.exit_code == 0, result.output
    [received] = smtp_server.messages
    assert received.rcpt_tos == ["editor@example.com"]  # normalised
    assert "Millbrook" in received.message["Subject"]
    assert issues(cli_ctx) == []
    bad = cli("send", "--to", "not an address")
    assert bad.exit_code == 2 and "--to" in bad.output


def test_manual_issue_of_chosen_stories(
    cli: Callable[..., Result],
    cli_ctx: Context,
    monkeypatch: pytest.MonkeyPatch,
    smtp_server: SMTPServer,
) -> None:
    add_subscribers(cli_ctx, 2)
    use_smtp(monkeypatch, smtp_server)
    with cli_ctx.db.read() as session:
        ids = list(session.scalars(select(Story.id).order_by(Story.id).limit(2)))
    result = cli(
        "send", "--yes", "--story", str(ids[1]), str(ids[0]), "--subject", "Special edition"
    )
    assert result.exit_code == 0, result.output
    [issue] = issues(cli_ctx)
    assert issue.kind is IssueKind.MANUAL and issue.subject == "Special edition"
    with cli_ctx.db.read() as session:
        order = list(
            session.scalars(
                select(IssueStory.story_id)
                .where(IssueStory.issue_id == issue.id)
                .order_by(IssueStory.position)
            )
        )
    assert order == [ids[1], ids[0]]  # the editor's order
    assert {m.message["Subject"] for m in smtp_server.messages} == {"Special edition"}
    assert cli("send", "--subject", "x").exit_code == 2  # --subject needs --story
    assert cli("send", "7").exit_code == 2  # ids only after --story
    assert cli("send", "--story", "3,x").exit_code == 2
    unknown = cli("send", "--yes", "--story", "9999")
    assert unknown.exit_code == 1 and "9999" in unknown.output


def test_policy_refusal_pauses_and_resume_finishes(
    cli: Callable[..., Result], cli_ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_subscribers(cli_ctx, 10)
    handler = FaultHandler(policy={email_for(4)})
    server = start_smtp(handler)
    use_smtp(monkeypatch, server)
    try:
        paused = cli("send", "--yes")
        assert paused.exit_code == 3, paused.output
        assert "PAUSED" in paused.output and "5.7.1" in paused.output
        assert "blocked using zen" in paused.output
        shown = cli("issues", "show", "1")
        assert "paused" in shown.output and "554 5.7.1" in shown.output
        listed = cli("issues", "list")
        assert "paused" in listed.output
        handler.policy.clear()
        resumed = cli("issues", "resume", "1")
        assert resumed.exit_code == 0, resumed.output
    finally:
        server.controller.stop()
    assert counts(server.messages) == {email_for(i): 1 for i in range(10)}


def test_failures_exit_nonzero_and_retry_failed(
    cli: Callable[..., Result], cli_ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_subscribers(cli_ctx, 6)
    handler = FaultHandler(fail={email_for(1)}, bounce={email_for(2)})
    server = start_smtp(handler)
    use_smtp(monkeypatch, server)
    try:
        first = cli("send", "--yes")
        assert first.exit_code == 1, first.output
        assert "1 deliveries failed permanently" in first.output
        handler.fail.clear()
        again = cli("issues", "retry-failed", "1")
        assert again.exit_code == 0, again.output
    finally:
        server.controller.stop()
    got = counts(server.messages)
    assert got == {email_for(i): 1 for i in range(6) if i != 2}


def test_send_resumes_an_unfinished_issue(
    cli: Callable[..., Result],
    cli_ctx: Context,
    monkeypatch: pytest.MonkeyPatch,
    smtp_server: SMTPServer,
) -> None:
    add_subscribers(cli_ctx, 5)
    issue_id = make_issue(cli_ctx, "Left over from yesterday")
    use_smtp(monkeypatch, smtp_server)
    result = cli("send", "--yes")
    assert result.exit_code == 0, result.output
    assert f"Issue #{issue_id} “Left over from yesterday” is unfinished" in result.output
    assert len(issues(cli_ctx)) == 1  # no new digest was started
    assert {m.message["Subject"] for m in smtp_server.messages} == {"Left over from yesterday"}


def test_a_second_sender_joins_and_says_who_else_is_sending(
    cli: Callable[..., Result],
    cli_ctx: Context,
    smtp_server: SMTPServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    add_subscribers(cli_ctx, 3)
    issue_id = make_issue(cli_ctx)
    other = ledger.Claimant("mailer-7.example:31337:abcdef", utcnow() + timedelta(seconds=2))
    with cli_ctx.db.write() as session:
        ledger.claim_next(session, issue_id, 0, 1, other)  # it dies holding one row
    shown = cli("issues", "show", str(issue_id))
    assert "Being sent by pid 31337 on mailer-7.example (1 rows in flight)" in shown.output
    use_smtp(monkeypatch, smtp_server)
    result = cli("send", "--yes")
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "joining it as one more sender (pid 31337 on mailer-7.example)" in said
    assert counts(smtp_server.messages) == {email_for(i): 1 for i in range(3)}


def test_cancel(cli: Callable[..., Result], cli_ctx: Context) -> None:
    add_subscribers(cli_ctx, 2)
    issue_id = make_issue(cli_ctx)
    assert cli("issues", "cancel", str(issue_id), input="n\n").exit_code == 1
    result = cli("issues", "cancel", str(issue_id), "--yes")
    assert result.exit_code == 0 and "cancelled" in result.output
    assert issues(cli_ctx)[0].status is IssueStatus.CANCELLED
    assert cli("issues", "cancel", str(issue_id), "--yes").exit_code == 1
    assert cli("issues", "resume", str(issue_id)).exit_code == 1
    assert cli("issues", "show", "99").exit_code == 1


def test_demo_sends_the_sample_digest_into_the_outbox(
    cli: Callable[..., Result], cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # configured for a real server: the demo must still only write files
    monkeypatch.setenv("NEWSLETTER_SMTP_URL", f"smtp://127.0.0.1:{free_port()}")
    result = cli("demo")
    assert result.exit_code == 0, result.output
    outbox = Path(cli_env["NEWSLETTER_OUTBOX"]) / "new"
    files = sorted(outbox.iterdir())
    assert len(files) == 4
    assert str(outbox) in result.output
    preview = Path("preview.html")
    assert preview.is_file() and str(preview.resolve()) in result.output
    html = preview.read_text(encoding="utf-8")
    assert "tram depot" in html and "<html" in html.lower()
    message = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert message["List-Unsubscribe"] and "Millbrook" in message["Subject"]
    recipients = {
        email.message_from_bytes(f.read_bytes(), policy=email.policy.default)["Delivered-To"]
        for f in files
    }
    assert "ada.reader@example.com" in recipients
    again = cli("demo")  # idempotent: nothing new, nobody mailed twice
    assert again.exit_code == 0 and len(list(outbox.iterdir())) == 4
