"""A reader's whole journey, in headless chromium, against real processes.

``newsletter serve`` runs as a subprocess (waitress) on a temporary SQLite file; mail
goes over SMTP to an aiosmtpd server in this test; ``newsletter stories import`` and
``newsletter send`` run as subprocesses too.  Chromium (Debian's, through
Playwright) subscribes, presses the one button behind the confirmation link, and
presses the unsubscribe button in the digest; the second send must skip the reader.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _databases import folder_database_url, query
from _web_support import Served, link, start_serve, wait_for
from conftest import CHROMIUM_ARGS, OWN_FEEDS, SMTPServer, chromium_path, start_smtp

pytestmark = pytest.mark.browser

READER = "journey.reader@example.com"
OTHER = "other.reader@example.com"


def _cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "newsletter", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"newsletter {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result


@pytest.fixture
def smtp() -> Iterator[SMTPServer]:
    server = start_smtp()
    yield server
    server.controller.stop()


@pytest.fixture
def server(tmp_path: Path, smtp: SMTPServer) -> Iterator[Served]:
    served = start_serve(tmp_path, smtp.url)
    yield served
    assert served.stop() == 0, served.output
    assert "Traceback" not in served.output, served.output


def _rows(tmp_path: Path, sql: str, **params: object) -> list[tuple[object, ...]]:
    return query(folder_database_url(tmp_path, "served.db"), sql, **params)


def _status(tmp_path: Path, email: str) -> tuple[str, str | None]:
    rows = _rows(
        tmp_path, "SELECT status, consent_ip FROM subscribers WHERE email = :email", email=email
    )
    assert rows, f"no subscriber {email}"
    status, ip = rows[0]
    return str(status), None if ip is None else str(ip)


def _mails_to(smtp: SMTPServer, email: str) -> list:  # type: ignore[type-arg]
    return [m for m in list(smtp.messages) if email in m.rcpt_tos]


def test_subscribe_confirm_receive_unsubscribe_in_chromium(
    tmp_path: Path, smtp: SMTPServer, server: Served
) -> None:
    from playwright.sync_api import sync_playwright

    base, env = server.base, server.env
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

        # 1. Subscribe through the form.
        page.goto(base + "/subscribe")
        page.fill("#email", READER)
        page.fill("#name", "Journey Reader")
        page.click("button[type=submit]")
        page.wait_for_selector("text=Check your inbox")
        assert _status(tmp_path, READER)[0] == "pending"

        # 2. The confirmation email; its link opens a page whose one button confirms.
        wait_for(lambda: bool(_mails_to(smtp, READER)), timeout=20)
        [confirmation] = _mails_to(smtp, READER)
        confirm_url = link(confirmation.message, "confirm", base)
        page.goto(confirm_url)
        assert _status(tmp_path, READER)[0] == "pending"  # opening it confirms nobody
        page.click("button[type=submit]")
        page.wait_for_selector("text=You're subscribed")
        status, consent_ip = _status(tmp_path, READER)
        assert status == "active" and consent_ip == "127.0.0.1"
        assert not errors, errors  # e.g. a CSP violation

        # 3. A digest of featured stories, sent by the real command.
        _cli(env, tmp_path, "stories", "import", str(OWN_FEEDS / "planet.xml"), "--feature")
        _cli(env, tmp_path, "send", "--yes")
        # (the second email is the welcome)
        wait_for(lambda: len(_mails_to(smtp, READER)) == 3, timeout=30)
        digest = _mails_to(smtp, READER)[2].message
        assert "List-Unsubscribe" in digest

        # 4. Its unsubscribe link: a page with one button; pressing it unsubscribes.
        page.goto(link(digest, "unsubscribe", base))
        assert _status(tmp_path, READER)[0] == "active"  # opening the page changed nothing
        page.click("button[type=submit]")
        page.wait_for_selector("text=You're unsubscribed")
        assert _status(tmp_path, READER)[0] == "unsubscribed"
        browser.close()

    # 5. Another issue goes out (manual: today's digest is done): the reader is skipped.
    _cli(env, tmp_path, "subscribers", "add", OTHER, "--confirmed")
    story_id = _rows(tmp_path, "SELECT id FROM stories ORDER BY id LIMIT 1")[0][0]
    _cli(env, tmp_path, "send", "--story", str(story_id), "--yes")
    wait_for(lambda: bool(_mails_to(smtp, OTHER)), timeout=30)
    time.sleep(0.5)
    assert len(_mails_to(smtp, READER)) == 3, "an unsubscribed reader got another issue"
    last_issue = _rows(tmp_path, "SELECT max(id) FROM issues")[0][0]
    recipients = {
        row[0]
        for row in _rows(
            tmp_path,
            "SELECT s.email FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id "
            "WHERE d.issue_id = :issue AND d.status = 'sent'",
            issue=last_issue,
        )
    }
    assert recipients == {OTHER}
