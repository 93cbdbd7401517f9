"""Settings (newsletter/config.py): defaults, .env vs environment, and bad values.

Every bad value must be a one-line ``ConfigError`` naming the setting, and the CLI
must turn it into ``Error: NEWSLETTER_X: ...`` with a non-zero exit, no traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from newsletter.cli import main
from newsletter.config import ConfigError, Settings, load_settings


def test_defaults_need_no_configuration() -> None:
    s = load_settings({}, dotenv_path=None)
    assert s == Settings()
    assert s.database_url == "sqlite:///subscribers.db"
    assert s.smtp_url is None
    assert s.outbox == Path("outbox")
    assert s.digest_cron == "0 7 * * *"
    assert s.send_rate == 0.0
    assert s.secret_key is None


def test_values_are_parsed() -> None:
    s = load_settings(
        {
            "NEWSLETTER_SMTP_URL": "smtps://user:pw@mail.example.com:465",
            "NEWSLETTER_BASE_URL": "https://news.example.com/",
            "NEWSLETTER_FEEDS": "https://a.example/rss, https://b.example/atom\nhttp://c.example/",
            "NEWSLETTER_SEND_RATE": "12.5",
            "NEWSLETTER_MAX_STORIES": " 7 ",
            "NEWSLETTER_TIMEZONE": "Europe/Madrid",
            "NEWSLETTER_DIGEST_CRON": "30 6 * * 1-5",
            "NEWSLETTER_SITE_NAME": "Morning Brief",
            "UNRELATED": "ignored",
        },
        dotenv_path=None,
    )
    assert s.smtp_url == "smtps://user:pw@mail.example.com:465"
    assert s.base_url == "https://news.example.com"  # trailing slash dropped for joining
    assert s.feeds == ("https://a.example/rss", "https://b.example/atom", "http://c.example/")
    assert s.send_rate == 12.5
    assert s.max_stories == 7
    assert s.tz.key == "Europe/Madrid"
    assert s.digest_cron == "30 6 * * 1-5"
    assert s.from_name == "Morning Brief"  # the site name is the default sender name
    assert "UNRELATED" not in repr(s)


def test_from_with_a_display_name() -> None:
    s = load_settings({"NEWSLETTER_FROM": "Daily News <news@example.com>"}, dotenv_path=None)
    assert (s.from_name, s.from_email) == ("Daily News", "news@example.com")
    assert s.sender_domain == "example.com"
    assert s.from_header == "Daily News <news@example.com>"


def test_from_bare_address_keeps_default_name() -> None:
    s = load_settings({"NEWSLETTER_FROM": "news@example.com"}, dotenv_path=None)
    assert (s.from_name, s.from_email) == ("The Daily Digest", "news@example.com")


def test_empty_values_mean_default() -> None:
    s = load_settings({"NEWSLETTER_SMTP_URL": "  ", "NEWSLETTER_SEND_RATE": ""}, dotenv_path=None)
    assert s.smtp_url is None and s.send_rate == 0.0


# --- .env and the environment ----------------------------------------------------------


def test_dotenv_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# deployment defaults\n"
        "NEWSLETTER_MAX_STORIES=3\n"
        "NEWSLETTER_SITE_NAME='From The File'\n"
        "NEWSLETTER_SEND_RATE=5\n",
        encoding="utf-8",
    )
    s = load_settings({"NEWSLETTER_SEND_RATE": "9"}, dotenv_path=dotenv)
    assert s.max_stories == 3  # only in .env
    assert s.site_name == "From The File"
    assert s.send_rate == 9.0  # in both: the environment wins


def test_missing_dotenv_is_fine(tmp_path: Path) -> None:
    assert load_settings({}, dotenv_path=tmp_path / "nope.env") == Settings()


def test_bad_value_in_dotenv_is_reported_too(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("NEWSLETTER_SEND_RATE=fast\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^NEWSLETTER_SEND_RATE: "):
        load_settings({}, dotenv_path=dotenv)


# --- every bad value: one line naming the setting ----------------------------------------

BAD = [
    ("NEWSLETTER_SMTP_URL", "http://mail.example.com", "expected smtp://"),
    ("NEWSLETTER_SMTP_URL", "smtp://", "expected smtp://"),
    ("NEWSLETTER_SMTP_URL", "smtp://host:port", "port is not a number"),
    ("NEWSLETTER_SMTP_URL", "smtp://a.example:587,,smtp://b.example", "an empty entry"),
    ("NEWSLETTER_SMTP_URL", "smtp://a.example:587,http://b.example", "expected smtp://"),
    ("NEWSLETTER_DAILY_LIMIT", "many", "expected a whole number"),
    ("NEWSLETTER_DAILY_LIMIT", "-5", "at least 0"),
    ("NEWSLETTER_DKIM_ED25519_SELECTOR", "ed1", "must be set together"),
    ("NEWSLETTER_FROM", "not an address", "expected 'Name <address@example.com>'"),
    ("NEWSLETTER_FROM", "News <news@>", ""),
    ("NEWSLETTER_FROM", "a@example.com, b@example.com", ""),
    ("NEWSLETTER_FROM", "News <news@example.com>\r\nBcc: x@example.com", "control characters"),
    ("NEWSLETTER_BASE_URL", "news.example.com", "expected an http(s) URL"),
    ("NEWSLETTER_BASE_URL", "ftp://news.example.com", "expected an http(s) URL"),
    ("NEWSLETTER_SECRET_KEY", "short", "at least 16 characters"),
    ("NEWSLETTER_DIGEST_CRON", "0 7 * *", "expected 5 fields"),
    ("NEWSLETTER_DIGEST_CRON", "99 7 * * *", ""),
    ("NEWSLETTER_TIMEZONE", "Mars/Olympus", "unknown time zone"),
    ("NEWSLETTER_FEEDS", "https://ok.example/rss file:///etc/passwd", "expected an http(s) URL"),
    ("NEWSLETTER_FEED_POLL_MINUTES", "often", "expected a whole number"),
    ("NEWSLETTER_FEED_POLL_MINUTES", "0", "at least 1"),
    ("NEWSLETTER_MAX_STORIES", "2.5", "expected a whole number"),
    ("NEWSLETTER_SMTP_CONNECTIONS", "-1", "at least 1"),
    ("NEWSLETTER_MAX_ATTEMPTS", "x", "expected a whole number"),
    ("NEWSLETTER_BATCH_SIZE", "0", "at least 1"),
    ("NEWSLETTER_MISFIRE_GRACE_SECONDS", "soon", "expected a whole number"),
    ("NEWSLETTER_SEND_RATE", "fast", "expected a number"),
    ("NEWSLETTER_SEND_RATE", "-3", "finite number >= 0"),
    ("NEWSLETTER_SEND_RATE", "nan", "finite number >= 0"),
    ("NEWSLETTER_SEND_RATE", "inf", "finite number >= 0"),
    ("NEWSLETTER_SMTP_TIMEOUT", "long", "expected a number"),
    ("NEWSLETTER_POSTAL_ADDRESS", "1 Street\nX-Evil: 1", "control characters"),
    ("NEWSLETTER_SITE_NAME", "Site\rName", "control characters"),
    ("NEWSLETTER_DKIM_SELECTOR", "bad selector!", "not a DNS label"),
    ("NEWSLETTER_TEMPLATES_DIR", "/no/such/dir", "no such directory"),
]


@pytest.mark.parametrize(("key", "value", "fragment"), BAD)
def test_bad_value_is_one_line_naming_the_setting(key: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({key: value}, dotenv_path=None)
    message = str(info.value)
    assert message.startswith(f"{key}: ")
    assert fragment in message
    assert "\n" not in message and "\r" not in message


def test_relay_list_and_ed25519_settings(tmp_path: Path) -> None:
    s = load_settings(
        {"NEWSLETTER_SMTP_URL": " smtp://a.example:587 , smtps://u:p@b.example:465"},
        dotenv_path=None,
    )
    assert s.smtp_urls == ("smtp://a.example:587", "smtps://u:p@b.example:465")
    assert load_settings({}, dotenv_path=None).smtp_urls == ()
    key = tmp_path / "ed.pem"
    key.write_text("x", encoding="utf-8")
    env = {"NEWSLETTER_DKIM_ED25519_KEY_FILE": str(key), "NEWSLETTER_DKIM_ED25519_SELECTOR": "ed1"}
    s = load_settings(env, dotenv_path=None)
    assert (s.dkim_ed25519_key_file, s.dkim_ed25519_selector) == (key, "ed1")
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(
            {**env, "NEWSLETTER_DKIM_ED25519_KEY_FILE": str(tmp_path / "no")}, dotenv_path=None
        )
    with pytest.raises(ConfigError, match="must differ"):
        load_settings(
            {**env, "NEWSLETTER_DKIM_KEY_FILE": str(key), "NEWSLETTER_DKIM_SELECTOR": "ed1"},
            dotenv_path=None,
        )


def test_dkim_settings_go_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be set together"):
        load_settings({"NEWSLETTER_DKIM_SELECTOR": "s1"}, dotenv_path=None)
    with pytest.raises(ConfigError, match=r"^NEWSLETTER_DKIM_KEY_FILE: no such file"):
        load_settings(
            {"NEWSLETTER_DKIM_SELECTOR": "s1", "NEWSLETTER_DKIM_KEY_FILE": str(tmp_path / "k")},
            dotenv_path=None,
        )
    key = tmp_path / "dkim.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\n", encoding="utf-8")
    s = load_settings(
        {"NEWSLETTER_DKIM_SELECTOR": "s1", "NEWSLETTER_DKIM_KEY_FILE": str(key)}, dotenv_path=None
    )
    assert (s.dkim_selector, s.dkim_key_file) == ("s1", key)


# --- the CLI turns a bad setting into one line and a non-zero exit ----------------------


@pytest.mark.parametrize(("key", "value", "fragment"), [BAD[3], BAD[9], BAD[21], BAD[12]])
def test_cli_reports_bad_setting_without_traceback(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, key: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(key, value)
    result = CliRunner().invoke(main, ["subscribers", "list"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"Error: {key}: ")
    assert fragment in lines[0]
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_cli_reads_dotenv_from_the_working_directory(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("NEWSLETTER_SEND_RATE", raising=False)
    (tmp_path / ".env").write_text("NEWSLETTER_SEND_RATE=quick\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["subscribers", "list"])
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: NEWSLETTER_SEND_RATE: expected a number")
    # ...and the environment overrides the file.
    monkeypatch.setenv("NEWSLETTER_SEND_RATE", "1")
    assert CliRunner().invoke(main, ["subscribers", "list"]).exit_code == 0


def test_help_works_with_broken_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SEND_RATE", "fast")
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "subscribers" in result.stdout


def test_bad_database_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^NEWSLETTER_DATABASE_URL: ") as info:
        load_settings({"NEWSLETTER_DATABASE_URL": "nonsense"}, dotenv_path=None)
    assert "\n" not in str(info.value)


def test_cli_database_that_cannot_be_opened_is_one_line(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x", encoding="utf-8")
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", f"sqlite:///{blocker}/subscribers.db")
    result = CliRunner().invoke(main, ["subscribers", "list"])
    assert result.exit_code not in (0, None)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert "NEWSLETTER_DATABASE_URL" in lines[0] or "database" in lines[0]
    assert isinstance(result.exception, SystemExit)  # handled, not a traceback


def test_env_example_documents_every_setting_and_loads() -> None:
    """.env.example is the settings reference: every field appears and the file is valid."""
    import dataclasses

    example = Path(__file__).resolve().parent.parent / ".env.example"
    text = example.read_text(encoding="utf-8")
    variable = {"from_name": "FROM", "from_email": "FROM"}
    variable["scheduler_lease_seconds"] = "SCHEDULER_LEASE_TTL"
    for f in dataclasses.fields(Settings):
        if f.metadata.get("setting") is False:
            continue
        assert f"NEWSLETTER_{variable.get(f.name, f.name.upper())}=" in text, f.name
    loaded = load_settings({}, dotenv_path=example)
    assert loaded.database_url == Settings().database_url
    assert loaded.digest_cron == Settings().digest_cron
