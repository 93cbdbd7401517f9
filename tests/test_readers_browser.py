"""Readers in headless chromium against real processes: the footer form from another
origin, a confirmation no link scanner can click, the welcome, preferences.

``newsletter serve`` runs as a subprocess (waitress) on a temporary SQLite file and
mails an aiosmtpd server in this test.  The "site" is a static page served by a
tiny ``http.server`` on another port of 127.0.0.1 (another origin), holding the
snippet ``newsletter embed`` printed.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from _web_support import Served, link, start_serve, wait_for
from conftest import CHROMIUM_ARGS, SMTPServer, chromium_path, free_port, start_smtp

pytestmark = pytest.mark.browser

READER = "footer.reader@example.com"


@pytest.fixture
def smtp() -> Iterator[SMTPServer]:
    server = start_smtp()
    yield server
    server.controller.stop()


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A static web site on its own origin: (origin, folder to put pages in)."""
    folder = tmp_path / "site"
    folder.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), partial(_Quiet, directory=folder))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", folder
    httpd.shutdown()
    httpd.server_close()


def _row(tmp_path: Path, email: str) -> tuple[str, str]:
    """The served process's own database (SQLite file or PostgreSQL): status, frequency."""
    import sqlalchemy
    from _databases import folder_database_url

    engine = sqlalchemy.create_engine(folder_database_url(tmp_path, "served.db"))
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sqlalchemy.text("SELECT status, frequency FROM subscribers WHERE email = :e"),
                {"e": email},
            ).first()
    finally:
        engine.dispose()
    assert row is not None, f"no subscriber {email}"
    return str(row[0]), str(row[1])


def _mails_to(smtp: SMTPServer, email: str) -> list:  # type: ignore[type-arg]
    return [m for m in list(smtp.messages) if email in m.rcpt_tos]


def _stop(served: Served) -> None:
    assert served.stop() == 0, served.output
    assert "Traceback" not in served.output, served.output


def test_opening_the_confirm_link_without_a_click_leaves_the_reader_pending(
    tmp_path: Path, smtp: SMTPServer
) -> None:
    from playwright.sync_api import sync_playwright

    served = start_serve(tmp_path, smtp.url)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(served.base + "/subscribe")
            page.fill("#email", "scanned@example.com")
            page.click("button[type=submit]")
            page.wait_for_selector("text=Check your inbox")
            wait_for(lambda: bool(_mails_to(smtp, "scanned@example.com")), timeout=20)
            [mail] = _mails_to(smtp, "scanned@example.com")
            url = link(mail.message, "confirm", served.base)

            # What a mail scanner's sandboxed browser does: open the link, run the page.
            scanner = browser.new_context().new_page()
            scanner.goto(url, wait_until="networkidle")
            scanner.wait_for_selector("text=Confirm my subscription")
            scanner.reload(wait_until="networkidle")
            assert _row(tmp_path, "scanned@example.com")[0] == "pending"

            # A person's one click.
            page.goto(url, wait_until="networkidle")
            assert _row(tmp_path, "scanned@example.com")[0] == "pending"
            page.click("button[type=submit]")
            page.wait_for_selector("text=You're subscribed")
            assert _row(tmp_path, "scanned@example.com")[0] == "active"
            browser.close()
    finally:
        _stop(served)


def test_footer_form_on_another_origin_to_welcome_to_weekly(
    tmp_path: Path, smtp: SMTPServer, site: tuple[str, Path]
) -> None:
    from playwright.sync_api import sync_playwright

    origin, folder = site
    served = start_serve(tmp_path, smtp.url, NEWSLETTER_ALLOWED_ORIGINS=origin)
    try:
        snippet = subprocess.run(
            [sys.executable, "-m", "newsletter", "embed"],
            env=served.env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert f'action="{served.base}/subscribe"' in snippet
        (folder / "article.html").write_text(
            "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Story</title>"
            "<link rel='icon' href='data:,'>"
            "</head><body><article><h1>A news story</h1><p>Text.</p></article>"
            f"<footer>{snippet}</footer></body></html>",
            encoding="utf-8",
        )
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            page = browser.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(f"{origin}/article.html")
            page.get_by_label("Email address").fill(READER)
            page.get_by_label("Name (optional)").fill("Footer Reader")
            page.click("footer button[type=submit]")
            page.wait_for_selector("text=Check your inbox")
            assert page.url == f"{served.base}/subscribe"
            assert _row(tmp_path, READER) == ("pending", "daily")

            wait_for(lambda: bool(_mails_to(smtp, READER)), timeout=20)
            [confirmation] = _mails_to(smtp, READER)
            page.goto(link(confirmation.message, "confirm", served.base))
            assert _row(tmp_path, READER)[0] == "pending"  # opening it is not confirming
            page.click("button[type=submit]")
            page.wait_for_selector("text=You're subscribed")
            assert _row(tmp_path, READER)[0] == "active"

            wait_for(lambda: len(_mails_to(smtp, READER)) == 2, timeout=20)
            welcome = _mails_to(smtp, READER)[1].message
            assert str(welcome["Subject"]).startswith("Welcome to")
            page.goto(link(welcome, "preferences", served.base))
            page.check("input[name=frequency][value=weekly]")
            page.click("text=Save my preferences")
            page.wait_for_selector("text=Saved.")
            assert _row(tmp_path, READER) == ("active", "weekly")
            assert not errors, errors
            browser.close()
        assert len(_mails_to(smtp, READER)) == 2  # one confirmation, one welcome
    finally:
        _stop(served)
