"""Shared fixtures: real SQLite files in a temp folder, real settings, a real SMTP server.

Nothing here is a mock: ``smtp_server`` is an aiosmtpd ``Controller`` on 127.0.0.1
that keeps every message it accepts, and every test gets a database of its own:
a SQLite file, or (``NEWSLETTER_TEST_DATABASE_URL`` naming a PostgreSQL server) a
fresh database there, dropped after the test (see ``_databases``).
"""

from __future__ import annotations

import email
import email.policy
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from _databases import drop_all, drop_database, new_database_url, on_postgres
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from newsletter.config import Settings, load_settings
from newsletter.context import Context

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures"
FEEDS = FIXTURES / "feeds"
ARTICLES = FIXTURES / "articles"
FEED_FILES = sorted(FEEDS.glob("*.xml"))
# Fixtures the project's own authors wrote (tests/fixtures/): always present, so a
# fresh clone tests the same cases (CDATA, origLink, pixels, media:group, non-ASCII,
# missing descriptions, a malformed feed, an article export, sponsored items).
OWN = ROOT / "tests" / "fixtures"
OWN_FEEDS = OWN / "feeds"
OWN_ARTICLES = OWN / "articles"
OWN_FEED_FILES = sorted(p for p in OWN_FEEDS.iterdir() if p.suffix in (".xml", ".atom"))
OWN_GOOD_FEEDS = ("planet.xml", "gazeta.xml", "wire.xml", "courier.atom")

# Under mutmut (BENCHMARKS.md, "Mutation kill rate") a mutant that makes a send loop
# idle forever would hold a worker until mutmut's own wall limit, minutes per
# mutant; each test gets this long instead, then fails (the mutant is caught).
MUTANT_TEST_LIMIT = 10


def _mutant_hangs(signum: int, frame: object) -> None:
    raise TimeoutError(f"ran {MUTANT_TEST_LIMIT} s under a mutant: it hangs")


@pytest.fixture(autouse=True)
def _fail_hanging_mutants() -> Iterator[None]:
    """Outside mutation testing this does nothing."""
    if "__mutmut_" not in os.environ.get("MUTANT_UNDER_TEST", ""):
        yield
        return
    previous = signal.signal(signal.SIGALRM, _mutant_hangs)
    signal.alarm(MUTANT_TEST_LIMIT)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_shared() -> Path:
    """``../shared/fixtures`` (real feeds nobody on the team wrote), or skip naming it.

    A fresh clone has no ``../shared``: those tests skip with the folder's path.
    In CI (``CI=true``) the folder must be there, so a missing one fails instead.
    """
    if FEEDS.is_dir() and ARTICLES.is_dir():
        return FIXTURES
    message = f"the shared fixtures folder {FIXTURES} is missing (clone shared/ beside the project)"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def shared() -> Path:
    """Use in a test that reads ``../shared/fixtures``: skips (fails in CI) when it is absent."""
    return require_shared()


def feed_set() -> tuple[Path, tuple[str, ...]]:
    """The feeds generic digest tests import: the real ones when present, else our own."""
    if FEEDS.is_dir():
        return FEEDS, ("bbc.xml", "theguardian.xml", "nytimes.xml", "elmundo.xml", "cnn.xml")
    if in_ci():
        pytest.fail(f"the shared fixtures folder {FIXTURES} is missing")
    return OWN_FEEDS, OWN_GOOD_FEEDS


CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; .ci/run installs it
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str:
    """Debian's chromium for Playwright's ``executable_path``.

    Missing on a developer's machine: the browser tests are skipped with the
    install command.  Missing in CI (``CI`` set): the test fails, never skips.
    """
    if CHROMIUM.exists():
        return str(CHROMIUM)
    message = "Debian's chromium is not installed (apt-get install chromium)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On PostgreSQL, tests about SQLite itself (files, pragmas, locking) are skipped."""
    if not on_postgres():
        return
    skip = pytest.mark.skip(reason="about SQLite itself (NEWSLETTER_TEST_DATABASE_URL is set)")
    for item in items:
        if "sqlite_only" in item.keywords:
            item.add_marker(skip)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    drop_all()


@pytest.fixture
def new_database(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Make more databases for one test (``new_database("b.db")``); dropped after it."""
    made: list[str] = []

    def factory(filename: str = "other.db", migrated: bool = True) -> str:
        url = new_database_url(tmp_path, filename, migrated=migrated)
        made.append(url)
        return url

    yield factory
    for url in made:
        drop_database(url)


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    """This test's database: a SQLite file in tmp_path, or a fresh PostgreSQL database."""
    url = new_database_url(tmp_path)
    yield url
    drop_database(url)


@pytest.fixture
def env(tmp_path: Path, database_url: str) -> dict[str, str]:
    """NEWSLETTER_* variables for a test: its own database, outbox and secret."""
    return {
        "NEWSLETTER_DATABASE_URL": database_url,
        "NEWSLETTER_OUTBOX": str(tmp_path / "outbox"),
        "NEWSLETTER_FROM": "The Daily Digest <news@example.com>",
        "NEWSLETTER_BASE_URL": "https://news.example.com",
        "NEWSLETTER_SECRET_KEY": "test-secret-key-0123456789",
        "NEWSLETTER_POSTAL_ADDRESS": "1 Fleet Street, London EC4Y 1AA",
        "NEWSLETTER_SITE_NAME": "The Daily Digest",
        # The tests' feed servers listen on 127.0.0.1, which production refuses (SSRF).
        "NEWSLETTER_FEEDS_ALLOW_PRIVATE": "1",
    }


@pytest.fixture
def make_settings(env: dict[str, str]) -> Callable[..., Settings]:
    def factory(**overrides: str) -> Settings:
        return load_settings({**env, **overrides}, dotenv_path=None)

    return factory


@pytest.fixture
def open_context(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Context]]:
    """``Context.open`` on settings with these overrides; each closed when the test ends."""
    opened: list[Context] = []

    def factory(**overrides: str) -> Context:
        c = Context.open(make_settings(**overrides))
        opened.append(c)
        return c

    yield factory
    for c in opened:
        c.close()


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def ctx(settings: Settings) -> Iterator[Context]:
    context = Context.open(settings)
    yield context
    context.close()


@pytest.fixture
def cli_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Run CLI commands (click's runner) against this test's settings, from tmp_path."""
    for key in list(__import__("os").environ):
        if key.startswith("NEWSLETTER_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    return env


@dataclass
class Received:
    envelope_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        msg = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class RecordingHandler:
    """Accepts everything and keeps it; subclass ``decide`` to inject faults."""

    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.rcpt_reply(address)
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        return reply

    def rcpt_reply(self, address: str) -> str:
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or envelope.content
        assert isinstance(data, bytes)
        with self.lock:
            self.messages.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos), data))
        return "250 Message accepted for delivery"

    def by_recipient(self) -> dict[str, list[Received]]:
        out: dict[str, list[Received]] = {}
        with self.lock:
            for m in self.messages:
                for r in m.rcpt_tos:
                    out.setdefault(r, []).append(m)
        return out


@dataclass
class SMTPServer:
    controller: Controller
    handler: RecordingHandler

    @property
    def url(self) -> str:
        return f"smtp://{self.controller.hostname}:{self.controller.port}"

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages


def start_smtp(handler: Any | None = None, **kwargs: Any) -> SMTPServer:
    handler = handler or RecordingHandler()
    controller = Controller(
        handler, hostname="127.0.0.1", port=free_port(), data_size_limit=10_000_000, **kwargs
    )
    controller.start()
    return SMTPServer(controller, handler)


@pytest.fixture
def smtp_server() -> Iterator[SMTPServer]:
    """A real SMTP server on 127.0.0.1 that records every message it accepts."""
    server = start_smtp()
    yield server
    server.controller.stop()


@pytest.fixture
def servers() -> Iterator[Callable[..., SMTPServer]]:
    """Start any number of SMTP servers (optionally fault-injecting); all stopped after."""
    started: list[SMTPServer] = []

    def start(handler: Any = None, **kwargs: Any) -> SMTPServer:
        server = start_smtp(handler, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.controller.stop()
