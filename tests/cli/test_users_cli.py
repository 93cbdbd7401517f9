"""``newsletter users add | list | remove | passwd``: prompts, stdin, rules, argon2 rows."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner, Result
from sqlalchemy import select

from newsletter.cli import main
from newsletter.config import load_settings
from newsletter.context import Context
from newsletter.models import User
from newsletter.web.admin.accounts import verify_password

GOOD = "a long enough passphrase"


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, ["users", *args], input=input, catch_exceptions=False)


def hashes(env: dict[str, str]) -> dict[str, str]:
    ctx = Context.open(load_settings(env, dotenv_path=None))
    try:
        with ctx.db.read() as session:
            return {u.email: u.password_hash for u in session.scalars(select(User))}
    finally:
        ctx.close()


def test_add_prompts_twice_and_stores_an_argon2_hash(cli_env: dict[str, str]) -> None:
    result = run("add", "Editor@News.Example.com", input=f"{GOOD}\n{GOOD}\n")
    assert result.exit_code == 0, result.output
    assert "Password: \nRepeat for confirmation: " in result.output  # asked twice
    assert "Editor editor@news.example.com added" in result.output
    stored = hashes(cli_env)
    assert list(stored) == ["editor@news.example.com"]
    assert stored["editor@news.example.com"].startswith("$argon2id$")
    assert verify_password(stored["editor@news.example.com"], GOOD)
    assert GOOD not in result.output


def test_add_refuses_mismatch_short_passwords_and_duplicates(cli_env: dict[str, str]) -> None:
    mismatch = run("add", "a@news.example.com", input=f"{GOOD}\n{GOOD}x\n{GOOD}\n{GOOD}\n")
    assert mismatch.exit_code == 0 and "do not match" in mismatch.output.lower()
    short = run("add", "b@news.example.com", "--password-stdin", input="elevenchars\n")
    assert short.exit_code == 1
    assert "Error: the password needs at least 12 characters" in short.output
    again = run("add", "a@news.example.com", "--password-stdin", input=f"{GOOD}\n")
    assert again.exit_code == 1 and "already an editor" in again.output
    bad = run("add", "not-an-address", "--password-stdin", input=f"{GOOD}\n")
    assert bad.exit_code == 1 and "Traceback" not in bad.output
    assert list(hashes(cli_env)) == ["a@news.example.com"]


def test_list_passwd_remove(cli_env: dict[str, str]) -> None:
    assert "No editors yet" in run("list").output
    assert run("add", "ed@news.example.com", "--password-stdin", input=f"{GOOD}\n").exit_code == 0
    listed = run("list")
    assert "ed@news.example.com" in listed.output and "last login never" in listed.output
    before = hashes(cli_env)["ed@news.example.com"]
    changed = run("passwd", "ed@news.example.com", "--password-stdin", input="another passphrase\n")
    assert changed.exit_code == 0, changed.output
    after = hashes(cli_env)["ed@news.example.com"]
    assert after != before and verify_password(after, "another passphrase")
    assert run("passwd", "nobody@news.example.com", "--password-stdin", input=GOOD).exit_code == 1
    assert run("remove", "ed@news.example.com").exit_code == 0
    assert hashes(cli_env) == {}
    missing = run("remove", "ed@news.example.com")
    assert missing.exit_code == 1 and "there is no editor" in missing.output


def test_users_help_does_not_load_flask() -> None:
    code = (
        "import sys\nfrom newsletter.cli import main\n"
        "try:\n    main(['users', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'flask' not in sys.modules, 'flask was imported'\n"
        "assert 'argon2' not in sys.modules, 'argon2 was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
