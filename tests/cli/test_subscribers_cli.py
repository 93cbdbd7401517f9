"""``newsletter subscribers ...`` through click's CliRunner, against a real SQLite file.

What a user sees: messages, exit codes, files written, and what ends up stored.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from newsletter.cli import main
from newsletter.config import load_settings
from newsletter.context import Context
from newsletter.models import Subscriber, SubscriberStatus


def run(*args: str, input: str | bytes | None = None) -> Result:
    return CliRunner().invoke(main, ["subscribers", *args], input=input, catch_exceptions=False)


def stored(env: dict[str, str]) -> dict[str, tuple[str, SubscriberStatus]]:
    ctx = Context.open(load_settings(env, dotenv_path=None))
    try:
        with ctx.db.read() as session:
            return {
                e: (n, s)
                for e, n, s in session.execute(
                    select(Subscriber.email, Subscriber.name, Subscriber.status)
                )
            }
    finally:
        ctx.close()


def test_add_list_remove_journey(cli_env: dict[str, str]) -> None:
    result = run("add", "Alice@Example.com", "--name", "Alice Liddell", "--confirmed")
    assert result.exit_code == 0, result.output
    assert result.stdout == "added alice@example.com (active)\n"
    assert run("add", "bob@example.com").stdout.startswith("added bob@example.com (pending)\n")
    again = run("add", "ALICE@example.com")
    assert again.exit_code == 0
    assert "already on the list (active)" in again.stdout
    promoted = run("add", "bob@example.com", "--confirmed")
    assert promoted.stdout == "bob@example.com was pending, now active\n"

    listing = run("list")
    assert listing.exit_code == 0
    assert "alice@example.com" in listing.stdout and "Alice Liddell" in listing.stdout
    assert listing.stdout.rstrip().endswith(
        "2 subscribers (0 pending, 2 active, 0 unsubscribed, 0 bounced, 0 complained)"
    )

    removed = run("remove", "alice@EXAMPLE.com")
    assert removed.exit_code == 0
    assert "unsubscribed alice@example.com" in removed.stdout
    assert (
        run("remove", "alice@example.com").stdout == "alice@example.com was already unsubscribed\n"
    )
    assert stored(cli_env)["alice@example.com"] == ("Alice Liddell", SubscriberStatus.UNSUBSCRIBED)

    refused = run("add", "alice@example.com", "--confirmed")
    assert refused.exit_code == 1
    assert "Error: alice@example.com unsubscribed on" in refused.stderr
    assert "Traceback" not in refused.output

    only = run("list", "--status", "Unsubscribed")
    assert "alice@example.com" in only.stdout and "bob@example.com" not in only.stdout
    assert only.stdout.rstrip().endswith("1 unsubscribed subscriber")


def test_list_prints_names_literally_and_limit(cli_env: dict[str, str]) -> None:
    run("add", "m@example.com", "--name", "[bold red]Markup[/] :smile:")
    run("add", "n@example.com")
    result = run("list", "--limit", "1")
    assert "[bold red]Markup[/] :smile:" in result.stdout
    assert "n@example.com" not in result.stdout
    assert result.stdout.rstrip().endswith("; showing 1")


def test_empty_list(cli_env: dict[str, str]) -> None:
    result = run("list", "--status", "bounced")
    assert result.exit_code == 0
    assert result.stdout == "0 bounced subscribers\n"


@pytest.mark.parametrize("args", [["add", "bad@"], ["remove", "x@localhost"], ["add", ""]])
def test_bad_address_is_a_usage_error(cli_env: dict[str, str], args: list[str]) -> None:
    result = run(*args)
    assert result.exit_code == 2
    assert "Invalid value for EMAIL" in result.stderr
    assert stored(cli_env) == {}


def test_bad_status_choice(cli_env: dict[str, str]) -> None:
    result = run("list", "--status", "vip")
    assert result.exit_code == 2
    assert "'vip' is not one of" in result.stderr


def test_remove_unknown_address(cli_env: dict[str, str]) -> None:
    result = run("remove", "ghost@example.com")
    assert result.exit_code == 1
    assert result.stderr == "Error: no subscriber with the address ghost@example.com\n"


def test_add_strips_header_injection_from_the_name(cli_env: dict[str, str]) -> None:
    assert run("add", "e@example.com", "--name", "Eve\r\nBcc: all@example.com").exit_code == 0
    assert stored(cli_env)["e@example.com"][0] == "Eve Bcc: all@example.com"


def test_erase_asks_first_and_deletes_everything(cli_env: dict[str, str]) -> None:
    run("add", "gdpr@example.com", "--name", "Forget Me", "--confirmed")
    declined = run("remove", "gdpr@example.com", "--erase", input="n\n")
    assert declined.exit_code == 1  # Aborted
    assert "gdpr@example.com" in stored(cli_env)

    erased = run("remove", "gdpr@example.com", "--erase", input="y\n")
    assert erased.exit_code == 0, erased.output
    assert "erased gdpr@example.com and 0 delivery record(s)" in erased.stdout
    assert stored(cli_env) == {}
    assert run("add", "gdpr@example.com").exit_code == 0  # no longer suppressed
    assert run("remove", "gdpr@example.com", "--erase", "--yes").exit_code == 0
    assert stored(cli_env) == {}


SAMPLE = (
    "\ufeffEmail,Name\r\n"
    "alice@example.com,Alice\r\n"
    "\r\n"
    "bob@,Bob\r\n"
    "Juergen@Bücher.example,Jürgen Groß\r\n"
    "jürgen@example.com,Jürgen\r\n"
    "ALICE@example.com,Alice again\r\n"
    "carol@example.com,Carol\r\n"
)


def test_import_reports_each_bad_row_and_exits_non_zero(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "list.csv"
    path.write_text(SAMPLE, encoding="utf-8")
    result = run("import", str(path))
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "rejected: line 4: 'bob@': not a valid email address: "
        "There must be something after the @-sign.",
        "rejected: line 6: 'jürgen@example.com': not a valid email address: "
        "Internationalized characters before the @-sign are not supported: 'ü'.",
        "skipped: line 7: 'ALICE@example.com': duplicate of line 2",
    ]
    assert result.stdout.startswith("imported 3 new (pending")
    assert "1 skipped, 2 rejected" in result.stdout
    assert stored(cli_env) == {
        "alice@example.com": ("Alice", SubscriberStatus.PENDING),
        "juergen@xn--bcher-kva.example": ("Jürgen Groß", SubscriberStatus.PENDING),
        "carol@example.com": ("Carol", SubscriberStatus.PENDING),
    }


def test_import_confirmed_and_suppressed_are_skipped(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    run("add", "gone@example.com", "--confirmed")
    run("remove", "gone@example.com")
    path = tmp_path / "list.csv"
    path.write_text("EMAIL\ngone@example.com\nnew@example.com\n", encoding="utf-8")
    result = run("import", str(path), "--confirmed")
    assert result.exit_code == 0, result.output
    assert "skipped: line 2: 'gone@example.com': unsubscribed on" in result.stderr
    assert stored(cli_env) == {
        "gone@example.com": ("", SubscriberStatus.UNSUBSCRIBED),
        "new@example.com": ("", SubscriberStatus.ACTIVE),
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"name\nAlice\n", "no 'email' column"),
        ("email,name\na@example.com,Renée\n".encode("latin-1"), "not UTF-8 text"),
    ],
)
def test_import_refuses_unreadable_files(
    cli_env: dict[str, str], tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    result = run("import", str(path))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {path}: ")
    assert message in result.stderr
    assert result.stderr.rstrip().endswith("nothing was imported")
    assert "Traceback" not in result.output
    assert stored(cli_env) == {}


def test_import_missing_file(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = run("import", str(tmp_path / "nope.csv"))
    assert result.exit_code == 2
    assert "nope.csv" in result.stderr


def test_import_from_stdin(cli_env: dict[str, str]) -> None:
    result = run("import", "-", input="email\nstdin@example.com\n")
    assert result.exit_code == 0, result.output
    assert "stdin@example.com" in stored(cli_env)


def test_export_stdout_and_file_round_trip(
    cli_env: dict[str, str], tmp_path: Path, new_database: Callable[..., str]
) -> None:
    run("add", "a@example.com", "--name", "=2+5", "--confirmed")
    run("add", "b@bücher.example", "--name", "Björn")
    out = run("export")
    assert out.exit_code == 0
    parsed = list(csv.reader(io.StringIO(out.stdout)))
    assert parsed[0] == ["email", "name", "status", "created_at", "confirmed_at"]
    assert [r[:3] for r in parsed[1:]] == [
        ["a@example.com", "'=2+5", "active"],
        ["b@xn--bcher-kva.example", "Björn", "pending"],
    ]
    assert parsed[1][4] and not parsed[2][4]

    target = tmp_path / "export.csv"
    written = run("export", "-o", str(target))
    assert written.exit_code == 0
    assert written.stderr == f"exported 2 subscribers to {target}\n"
    assert target.read_text(encoding="utf-8") == out.stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".export")] == []
    assert target.stat().st_mode & 0o077 == 0  # personal data: owner-only

    # The export imports into a fresh database and exports back byte for byte.
    fresh = {**cli_env, "NEWSLETTER_DATABASE_URL": new_database("fresh.db")}
    result = CliRunner().invoke(
        main, ["subscribers", "import", str(target), "--confirmed"], env=fresh
    )
    assert result.exit_code == 0, result.output
    again = CliRunner().invoke(main, ["subscribers", "export"], env=fresh)
    assert again.stdout == out.stdout
    assert stored(fresh)["a@example.com"] == ("=2+5", SubscriberStatus.ACTIVE)


def test_export_to_unwritable_place(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = run("export", "-o", str(tmp_path / "missing-dir" / "x.csv"))
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: cannot write ")
    assert "No such file or directory" in result.stderr


def test_help_lists_every_subcommand(cli_env: dict[str, str]) -> None:
    result = run("--help")
    for name in ("add", "import", "export", "list", "remove"):
        assert f"  {name} " in result.stdout


def test_big_lists_print_the_same_columns_without_rich(
    cli_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from newsletter.cli import subscribers as cli_subscribers

    path = tmp_path / "many.csv"
    path.write_text(
        "email,name\n" + "".join(f"r{i}@example.com,Reader 李 {i}\n" for i in range(5)),
        encoding="utf-8",
    )
    assert run("import", str(path), "--confirmed").exit_code == 0
    rich_lines = run("list").stdout.splitlines()
    monkeypatch.setattr(cli_subscribers, "RICH_MAX_ROWS", 2)
    plain_lines = run("list").stdout.splitlines()
    assert [line.rstrip() for line in plain_lines] == [line.rstrip() for line in rich_lines]
    assert plain_lines[0].split() == ["ID", "Email", "Name", "Status", "Joined", "Confirmed"]
    assert plain_lines[-1] == (
        "5 subscribers (0 pending, 5 active, 0 unsubscribed, 0 bounced, 0 complained)"
    )
    assert len(plain_lines) == 7
