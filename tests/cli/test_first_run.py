"""A first run that cannot embarrass anyone, and CLI manners.

Placeholder settings refused before mailing real people, misspelt settings named,
a busy port and a bad DKIM key as one line, confirmation emails from the CLI,
progress lines in logs, ``[TEST]`` copies, validation before any progress.
"""

from __future__ import annotations

import email
import email.policy
import mailbox
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from _delivery_support import add_subscribers
from click.testing import CliRunner, Result
from conftest import ROOT, SMTPServer
from sqlalchemy import func, select

from newsletter.cli import main
from newsletter.cli.sendview import LineProgress
from newsletter.config import load_settings
from newsletter.context import Context
from newsletter.delivery.engine import Progress
from newsletter.models import Issue, Subscriber, SubscriberStatus
from newsletter.stories import import_sources

EXAMPLE_FEED = ROOT / "newsletter" / "examples" / "stories.xml"


def invoke(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


@pytest.fixture
def fresh_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smtp_server: SMTPServer
) -> Iterator[dict[str, str]]:
    """What a new user sets first: only the SMTP URL and the sender (plus a test database)."""
    for key in list(__import__("os").environ):
        if key.startswith("NEWSLETTER_"):
            monkeypatch.delenv(key)
    env = {
        "NEWSLETTER_DATABASE_URL": f"sqlite:///{tmp_path / 'subscribers.db'}",
        "NEWSLETTER_SMTP_URL": smtp_server.url,
        "NEWSLETTER_FROM": "The Daily Digest <news@example.com>",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    ctx = Context.open(load_settings(dotenv_path=None))
    with ctx.db.write() as session:
        assert import_sources(session, [str(EXAMPLE_FEED)], feature=True).ok
    add_subscribers(ctx, 3)
    ctx.close()
    yield env


def issue_count(env: dict[str, str]) -> int:
    ctx = Context.open(load_settings(env, dotenv_path=None))
    try:
        with ctx.db.read() as session:
            return int(session.scalar(select(func.count()).select_from(Issue)) or 0)
    finally:
        ctx.close()


def test_smtp_send_on_placeholder_settings_is_refused(
    fresh_env: dict[str, str], smtp_server: SMTPServer
) -> None:
    result = invoke("send", "--yes")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert "NEWSLETTER_BASE_URL is not set" in lines[0]
    assert "NEWSLETTER_POSTAL_ADDRESS is not set" in lines[0]
    assert issue_count(fresh_env) == 0 and smtp_server.messages == []


def test_one_missing_setting_is_named_alone(
    fresh_env: dict[str, str], smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_BASE_URL", "https://news.example.com")
    result = invoke("send", "--yes")
    assert result.exit_code == 2
    assert "NEWSLETTER_POSTAL_ADDRESS" in result.output and "BASE_URL" not in result.output
    assert invoke("issues", "resume", "1").exit_code == 2  # resuming mails people too


def test_an_explicit_localhost_url_is_the_users_choice(
    fresh_env: dict[str, str], smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_BASE_URL", "http://localhost:8000")  # same as the default
    monkeypatch.setenv("NEWSLETTER_POSTAL_ADDRESS", "1 Test Lane, Testville")
    result = invoke("send", "--yes")
    assert result.exit_code == 0, result.output
    assert len(smtp_server.messages) == 3


def test_outbox_and_test_copies_work_on_defaults(
    fresh_env: dict[str, str], smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = invoke("send", "--to", "editor@example.org")  # a test copy through SMTP
    assert result.exit_code == 0, result.output
    (copy,) = smtp_server.messages
    assert str(copy.message["Subject"]).startswith("[TEST] ")
    assert issue_count(fresh_env) == 0
    monkeypatch.delenv("NEWSLETTER_SMTP_URL")  # the Maildir outbox
    result = invoke("send", "--yes")
    assert result.exit_code == 0, result.output
    assert len(list(mailbox.Maildir(Path("outbox")))) == 3


def test_dry_run_is_allowed_on_placeholders(fresh_env: dict[str, str]) -> None:
    result = invoke("send", "--dry-run")
    assert result.exit_code == 0, result.output


def test_env_example_leaves_both_placeholders_unset() -> None:
    example = ROOT / ".env.example"
    settings = load_settings({}, dotenv_path=example)
    assert settings.unset == {"BASE_URL", "POSTAL_ADDRESS"}
    text = example.read_text(encoding="utf-8")
    assert "\nNEWSLETTER_BASE_URL=" not in text and "\nNEWSLETTER_POSTAL_ADDRESS=" not in text
    assert "# NEWSLETTER_BASE_URL=" in text and "# NEWSLETTER_POSTAL_ADDRESS=" in text


def test_demo_works_on_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("NEWSLETTER_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    result = invoke("demo")
    assert result.exit_code == 0, result.output
    assert list(mailbox.Maildir(tmp_path / "outbox"))


# --------------------------------------------------------------------------- settings


def test_unknown_setting_is_named_with_the_closest_known_one(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NEWSLETTER_SMTP_ULR", "smtp://relay.example.com:587")
    (tmp_path / ".env").write_text("NEWSLETTER_POSTAL_ADRESS=1 Main St\n", encoding="utf-8")
    for args in (["stories", "list"], ["subscribers", "list"], ["issues", "list"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        assert (
            "warning: unknown setting NEWSLETTER_SMTP_ULR is ignored; "
            "did you mean NEWSLETTER_SMTP_URL?" in result.stderr
        )
        assert "did you mean NEWSLETTER_POSTAL_ADDRESS?" in result.stderr


def test_known_settings_give_no_warning(cli_env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["stories", "list"])
    assert "warning" not in result.stderr


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("command", ["serve", "run"])
def test_busy_port_is_one_line_and_exit_1(cli_env: dict[str, str], command: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(main, [command, "--port", str(port)])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines == [
        f"Error: cannot listen on 127.0.0.1:{port}: the port is already in use "
        "(another server is running there; stop it or choose another --port)"
    ]


def test_bad_dkim_key_is_one_line_before_an_issue_exists(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key = tmp_path / "dkim.pem"
    key.write_text("-----BEGIN RSA PRIVATE KEY-----\nnot a key\n-----END RSA PRIVATE KEY-----\n")
    monkeypatch.setenv("NEWSLETTER_DKIM_KEY_FILE", str(key))
    monkeypatch.setenv("NEWSLETTER_DKIM_SELECTOR", "news")
    ctx = Context.open(load_settings(dotenv_path=None))
    with ctx.db.write() as session:
        assert import_sources(session, [str(EXAMPLE_FEED)], feature=True).ok
    add_subscribers(ctx, 2)
    result = CliRunner().invoke(main, ["send", "--yes"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "NEWSLETTER_DKIM_KEY_FILE" in lines[0], result.output
    assert "Traceback" not in result.output
    with ctx.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Issue)) == 0
    ctx.close()


def test_unknown_issue_is_refused_before_any_progress(cli_env: dict[str, str]) -> None:
    for args in (["issues", "resume", "999"], ["issues", "retry-failed", "999"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1
        assert result.output == "Error: there is no issue 999\n"  # no bar, no "Resuming #999"


def test_every_option_of_every_command_is_described() -> None:
    import click

    def walk(command: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
        yield path, command
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from walk(sub, f"{path} {name}")

    for path, command in walk(main, "newsletter"):
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{path} {param.opts[0]} has no description"
    result = CliRunner().invoke(main, ["run", "--help"])
    assert result.exit_code == 0
    for markup in ("``", "[bold", "[/", "\\b"):
        assert markup not in result.output


# --------------------------------------------------------------------------- subscribers


def maildir_messages(path: Path) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(m.as_bytes(), policy=email.policy.default)  # type: ignore[misc]
        for m in mailbox.Maildir(path)
    ]


def test_subscribers_add_sends_the_confirmation_email(cli_env: dict[str, str]) -> None:
    result = invoke("subscribers", "add", "ana@example.org", "--name", "Ana López")
    assert result.exit_code == 0, result.output
    assert "sent a confirmation email to 1 address(es)" in result.output
    assert "--no-email" in result.output
    (msg,) = maildir_messages(Path(cli_env["NEWSLETTER_OUTBOX"]))
    assert msg["To"].addresses[0].addr_spec == "ana@example.org"
    assert "https://news.example.com/confirm/" in msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    again = invoke("subscribers", "add", "ana@example.org")
    assert "was sent before" in again.output
    assert len(maildir_messages(Path(cli_env["NEWSLETTER_OUTBOX"]))) == 1  # not twice


def test_no_email_and_confirmed_send_nothing(cli_env: dict[str, str]) -> None:
    quiet = invoke("subscribers", "add", "bo@example.org", "--no-email")
    assert quiet.exit_code == 0 and "no confirmation email sent (--no-email)" in quiet.output
    assert invoke("subscribers", "add", "cy@example.org", "--confirmed").exit_code == 0
    assert not Path(cli_env["NEWSLETTER_OUTBOX"]).exists() or not maildir_messages(
        Path(cli_env["NEWSLETTER_OUTBOX"])
    )


def test_subscribers_import_mails_each_new_pending_address(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    csv = tmp_path / "people.csv"
    csv.write_text("email,name\nana@example.org,Ana\nbo@example.org,Bo\n", encoding="utf-8")
    result = invoke("subscribers", "import", str(csv))
    assert result.exit_code == 0, result.output
    assert "sent a confirmation email to 2 address(es)" in result.output
    got = sorted(
        m["To"].addresses[0].addr_spec for m in maildir_messages(Path(cli_env["NEWSLETTER_OUTBOX"]))
    )
    assert got == ["ana@example.org", "bo@example.org"]
    again = invoke("subscribers", "import", str(csv))
    assert "sent a confirmation" not in again.output  # a re-import mails nobody twice
    ctx = Context.open(load_settings(dotenv_path=None))
    with ctx.db.read() as session:
        rows = session.scalars(select(Subscriber)).all()
        assert all(s.status is SubscriberStatus.PENDING and s.confirm_sent_at for s in rows)
    ctx.close()


# --------------------------------------------------------------------------- progress


def snapshot(done: int, total: int = 1000) -> Progress:
    return Progress(
        total=total, sent=done, failed=0, bounced=0, skipped=0, retrying=0,
        elapsed=done / 100 or 0.0, sent_this_run=done,
    )  # fmt: skip


def test_progress_lines_every_five_percent() -> None:
    lines: list[str] = []
    report = LineProgress("Sending #1", every=3600, out=lines.append)
    for done in range(1, 1001):
        report(snapshot(done))
    assert len(lines) == 20  # 5 %, 10 %, ... 100 %
    assert lines[0] == "Sending #1: 50/1,000 (5%) done, 50 sent, 0 failed, 100.0 msg/s, ETA 10 s"
    assert lines[-1].startswith("Sending #1: 1,000/1,000 (100%) done")


def test_progress_lines_on_a_timer_too() -> None:
    lines: list[str] = []
    report = LineProgress("Sending #1", every=0.0, out=lines.append)
    for done in (1, 2, 3):
        report(snapshot(done, total=100_000))
    assert len(lines) == 3  # below 5 % but the interval has passed each time


def test_send_without_a_terminal_logs_progress_lines(
    cli_env: dict[str, str], smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_SMTP_URL", smtp_server.url)
    monkeypatch.setenv("NEWSLETTER_SEND_RATE", "400")  # about a second: several flushes
    ctx = Context.open(load_settings(dotenv_path=None))
    with ctx.db.write() as session:
        assert import_sources(session, [str(EXAMPLE_FEED)], feature=True).ok
    add_subscribers(ctx, 400)
    ctx.close()
    result = invoke("send", "--yes")  # click's runner: not a terminal
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Sending #1: ")]
    assert len(lines) >= 3, result.output
    assert all(
        "sent" in line and "failed" in line and "msg/s" in line and "ETA" in line for line in lines
    )
    assert lines[-1].startswith("Sending #1: 400/400 (100%)")
