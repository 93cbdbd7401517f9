"""``newsletter dkim keygen | record`` and the DKIM checks before anything is sent."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _delivery_support import add_subscribers
from _dkim_support import dns_stub, verify_all
from click.testing import CliRunner, Result
from conftest import SMTPServer, free_port
from sqlalchemy import func, select

from newsletter.cli import main
from newsletter.config import load_settings
from newsletter.context import Context
from newsletter.models import Issue
from newsletter.stories import import_sources

EXAMPLE_FEED = Path(__file__).resolve().parents[2] / "newsletter" / "examples" / "stories.xml"


@pytest.fixture
def cli(cli_env: dict[str, str]) -> Callable[..., Result]:
    def invoke(*args: str) -> Result:
        return CliRunner().invoke(main, list(args), catch_exceptions=False)

    return invoke


@pytest.fixture
def cli_ctx(cli_env: dict[str, str]) -> Iterator[Context]:
    """The CLI's database with featured stories and two active readers."""
    ctx = Context.open(load_settings(dotenv_path=None))
    with ctx.db.write() as session:
        assert import_sources(session, [str(EXAMPLE_FEED)], feature=True).ok
    add_subscribers(ctx, 2)
    yield ctx
    ctx.close()


def _records(output: str) -> dict[str, str]:
    """Name -> value from ``dkim record`` output, its 255-character strings joined."""
    out: dict[str, str] = {}
    name = ""
    for line in output.splitlines():
        if line.startswith("Name:"):
            name = line.split(None, 1)[1]
        elif line.startswith("Value:"):
            strings = line.split(None, 1)[1]
            parts = [p for p in strings.split('"') if p.strip()]
            assert all(len(p) <= 255 for p in parts)
            out[name] = "".join(parts)
    return out


def test_keygen_writes_0600_and_never_overwrites(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    result = cli("dkim", "keygen", "-o", "key.pem")
    assert result.exit_code == 0, result.output
    key = tmp_path / "key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert "NEWSLETTER_DKIM_KEY_FILE=" in result.output
    before = key.read_bytes()
    again = cli("dkim", "keygen", "-o", "key.pem")
    assert again.exit_code == 1 and "not overwritten" in again.output
    assert key.read_bytes() == before
    ed = cli("dkim", "keygen", "--type", "ed25519")
    assert ed.exit_code == 0 and (tmp_path / "dkim-ed25519.pem").exists()
    assert "NEWSLETTER_DKIM_ED25519_KEY_FILE=" in ed.output
    assert cli("dkim", "keygen", "--type", "ed25519", "--bits", "2048").exit_code == 2


def test_record_without_a_key_says_how(cli: Callable[..., Result]) -> None:
    result = cli("dkim", "record")
    assert result.exit_code == 1 and "dkim keygen" in result.output


def test_new_user_journey_keygen_record_send_to_verifies(
    cli: Callable[..., Result],
    cli_ctx: Context,
    smtp_server: SMTPServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """keygen (RSA-4096 and Ed25519) -> record -> set the keys -> send --to yourself."""
    assert cli("dkim", "keygen", "--bits", "4096").exit_code == 0
    assert cli("dkim", "keygen", "--type", "ed25519").exit_code == 0
    monkeypatch.setenv("NEWSLETTER_DKIM_KEY_FILE", str(tmp_path / "dkim.pem"))
    monkeypatch.setenv("NEWSLETTER_DKIM_SELECTOR", "news1")
    monkeypatch.setenv("NEWSLETTER_DKIM_ED25519_KEY_FILE", str(tmp_path / "dkim-ed25519.pem"))
    monkeypatch.setenv("NEWSLETTER_DKIM_ED25519_SELECTOR", "newse1")
    shown = cli("dkim", "record")
    assert shown.exit_code == 0, shown.output
    records = _records(shown.output)
    assert set(records) == {"news1._domainkey.example.com", "newse1._domainkey.example.com"}
    assert len(records["news1._domainkey.example.com"]) > 255  # a 4096-bit key needs 3 strings
    monkeypatch.setenv("NEWSLETTER_SMTP_URL", smtp_server.url)
    sent = cli("send", "--to", "me@example.org")
    assert sent.exit_code == 0, sent.output
    (message,) = smtp_server.messages
    assert verify_all(message.data, dns_stub(records)) == [True, True]


def _issue_count(ctx: Context) -> int:
    with ctx.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(Issue)) or 0)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n", "PEM"),
        (None, "passphrase"),
    ],
)
def test_bad_key_is_one_line_exit_2_before_any_issue(
    cli_env: dict[str, str], cli_ctx: Context, tmp_path: Path, content: bytes | None, words: str
) -> None:
    key = tmp_path / "dkim.pem"
    if content is None:
        if shutil.which("openssl") is None:
            pytest.skip("the openssl command is not installed")
        subprocess.run(
            [
                "openssl",
                "genpkey",
                "-algorithm",
                "RSA",
                "-aes-128-cbc",
                "-pass",
                "pass:pw",
                "-out",
                str(key),
            ],
            check=True,
            capture_output=True,
        )
    else:
        key.write_bytes(content)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update(cli_env, NEWSLETTER_DKIM_KEY_FILE=str(key), NEWSLETTER_DKIM_SELECTOR="s1")
    port = str(free_port())
    for args in (
        ["send", "--yes"],
        ["send", "--to", "me@example.org"],
        ["preview", "--eml"],
        ["schedule"],
        ["run", "--port", port],
        ["serve", "--port", port],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "newsletter", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,  # a command that did not check would run on: fail, do not hang
        )
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith("Error: NEWSLETTER_DKIM_") and "DKIM key file" in lines[0]
        assert words in lines[0] and "Traceback" not in proc.stderr
        assert _issue_count(cli_ctx) == 0


def test_missing_selector_is_exit_2(
    cli: Callable[..., Result],
    cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    assert cli("dkim", "keygen", "--type", "ed25519").exit_code == 0
    monkeypatch.setenv("NEWSLETTER_DKIM_ED25519_KEY_FILE", str(tmp_path / "dkim-ed25519.pem"))
    result = cli("send", "--yes")
    assert result.exit_code == 2 and "_SELECTOR must be set together" in result.output
