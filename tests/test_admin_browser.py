"""The editor's journey in Debian's headless chromium, against real processes; and
axe-core on every admin page.

``newsletter serve`` runs as a subprocess (waitress) on a temporary SQLite file, the
site's featured feed (our own fixture, tests/fixtures/feeds/wire.xml) is served
by a local HTTP server, and mail goes over SMTP to an aiosmtpd server in this test.
The editor logs in, imports the feed, pins a lead, previews the digest, sends a
test to themself, sends to 50 readers while the issue page follows the progress to
50, reads the issue's counts and logs out.

axe-core (npm) is installed into a cache folder on first use; without npm or the
registry the accessibility test is skipped with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _stories_support import FeedServer, Served, feed_server
from _web_support import Served as ServedApp
from _web_support import process_env, start_serve, wait_for
from conftest import CHROMIUM_ARGS, SMTPServer, chromium_path, start_smtp

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
FEED = ROOT / "tests" / "fixtures" / "feeds" / "wire.xml"
EDITOR = "desk.editor@news.example.com"
PASSWORD = "a long editor passphrase"
READERS = 50
LEAD = "Kenya's solar-powered desalination plant reaches full output"
AXE_CACHE = Path(os.environ.get("NEWSLETTER_NPM_CACHE", Path.home() / ".cache" / "newsletter-npm"))
GIF = bytes.fromhex(
    "47494638396101000100800000ffffff00000021f90401000000002c00000000010001000002024401003b"
)
WCAG = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]


def _cli(env: dict[str, str], cwd: Path, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "newsletter", *args],
        env=env,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"newsletter {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout


@pytest.fixture
def smtp() -> Iterator[SMTPServer]:
    server = start_smtp()
    yield server
    server.controller.stop()


@pytest.fixture
def feeds() -> Iterator[FeedServer]:
    with feed_server() as server:
        server.routes["/featured.xml"] = Served(FEED.read_bytes())
        yield server


@pytest.fixture
def desk(tmp_path: Path, smtp: SMTPServer, feeds: FeedServer) -> Iterator[ServedApp]:
    """``serve`` with an editor account and 50 confirmed readers, sending at 20 msg/s."""
    extra = {
        "NEWSLETTER_FEEDS": feeds.url("/featured.xml"),
        "NEWSLETTER_FEEDS_ALLOW_PRIVATE": "true",
        "NEWSLETTER_SEND_RATE": "20",
    }
    env = process_env(tmp_path, smtp.url, 0, **extra)
    _cli(env, tmp_path, "users", "add", EDITOR, "--password-stdin", stdin=PASSWORD + "\n")
    csv = tmp_path / "readers.csv"
    csv.write_text(
        "email,name\n" + "".join(f"r{i}@example.org,Reader {i}\n" for i in range(READERS))
    )
    _cli(env, tmp_path, "subscribers", "import", str(csv), "--confirmed")
    served = start_serve(tmp_path, smtp.url, **extra)
    yield served
    assert served.stop() == 0, served.output
    assert "Traceback" not in served.output, served.output


def _answer_images(page: Any) -> None:
    """Story images are remote: answer them locally so nothing leaves the machine."""

    def answer(route: Any) -> None:
        if route.request.url.startswith("http://127.0.0.1:"):
            route.continue_()
        else:
            route.fulfill(status=200, content_type="image/gif", body=GIF)

    page.route("**/*", answer)


def _login(page: Any, base: str) -> None:
    page.goto(base + "/admin/")
    assert "/admin/login" in page.url
    page.fill("#email", EDITOR)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("h1:has-text('Dashboard')")


def _to(smtp: SMTPServer, address: str) -> list[Any]:
    return [m for m in list(smtp.messages) if address in m.rcpt_tos]


@pytest.fixture
def browser() -> Iterator[Any]:
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def test_editor_journey_in_chromium(
    browser: Any, desk: ServedApp, smtp: SMTPServer, tmp_path: Path
) -> None:
    base = desk.base
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    _answer_images(page)

    _login(page, base)
    assert page.locator(".tiles").first.inner_text().count(str(READERS)) >= 1

    # Import the site's featured feed now, then pin a lead.
    page.click("nav >> text=Stories")
    page.click("button:has-text('Import now')")
    page.wait_for_selector("text=5 added")
    page.get_by_role("button", name=re.compile(r"Pin as lead ?: " + re.escape(LEAD))).click()
    page.wait_for_selector("text=is the lead now")
    rows = page.locator("#story-order tbody tr")
    assert "Lead" in rows.first.inner_text() and LEAD in rows.first.inner_text()
    # The drag handle (progressive): the last story dragged onto the second row.
    last = rows.nth(3).inner_text().split("\n")[0]
    rows.nth(3).drag_to(rows.nth(1), target_position={"x": 40, "y": 2})
    page.wait_for_selector("text=The order of the next digest is saved")
    order = page.locator("#story-order tbody tr").all_inner_texts()
    assert LEAD in order[0] and last.split("\t")[-1].strip() in order[1], (last, order)

    # Preview: the frame holds the email as readers get it, lead first, no script.
    page.click("nav >> text=Next digest")
    frame = page.frame_locator("iframe.preview")
    body = frame.locator("body").inner_text(timeout=20_000)
    assert LEAD in body and body.index(LEAD[:20]) < body.index("Ceasefire talks")  # lead first
    assert "<script>" not in frame.locator("body").inner_html()

    # A test copy to myself: it reaches the SMTP server, addressed to me only.
    page.click("button:has-text('Send a test to me')")
    page.wait_for_selector(f"text=A test copy went to {EDITOR}")
    wait_for(lambda: bool(_to(smtp, EDITOR)), timeout=30)
    [test_copy] = _to(smtp, EDITOR)
    assert test_copy.rcpt_tos == [EDITOR]
    assert test_copy.message["Subject"].startswith("[TEST] ")
    assert len(smtp.messages) == 1

    # Send to the 50 readers behind a confirmation, watching the progress reach 50.
    page.click("text=Send now")
    page.wait_for_selector(f"text=goes to {READERS} active readers")
    page.click(f"button:has-text('Send to {READERS} readers')")
    page.wait_for_selector("#progress")
    seen: set[int] = set()

    def sent_count() -> int:
        value = int(page.locator("#p-sent").inner_text().replace(",", ""))
        seen.add(value)
        return value

    wait_for(lambda: sent_count() == READERS, timeout=120)
    page.wait_for_selector("#p-status:has-text('sent')", timeout=30_000)
    assert any(0 < n < READERS for n in seen), f"progress was not followed live: {seen}"
    assert page.locator("#p-failed").inner_text() == "0"
    readers = [r for m in list(smtp.messages) for r in m.rcpt_tos if r.endswith("@example.org")]
    assert sorted(readers) == sorted(f"r{i}@example.org" for i in range(READERS))

    # The counts, in the list too.
    page.click("nav >> text=Issues")
    row = page.locator("tbody tr").first.inner_text()
    assert f"{READERS}/{READERS}" in row

    page.click("button:has-text('Log out')")
    page.wait_for_selector("text=You are logged out")
    page.goto(base + "/admin/issues")
    assert "/admin/login" in page.url
    assert not errors, errors
    outcomes = [r[0] for r in _query(tmp_path, "SELECT outcome FROM login_events ORDER BY id")]
    assert outcomes == ["ok", "logout"]


# --------------------------------------------------------------------------- axe-core


def axe_script() -> Path:
    """axe-core's browser bundle: the project's vendored copy, else npm into a cache folder."""
    vendored = ROOT / "tests" / "fixtures" / "axe" / "axe.min.js"
    if vendored.exists():
        return vendored
    script = AXE_CACHE / "node_modules" / "axe-core" / "axe.min.js"
    if script.exists():
        return script
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("axe-core is not available: npm is not installed")
    AXE_CACHE.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(AXE_CACHE), "axe-core@4"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0 or not script.exists():
        pytest.skip(f"axe-core could not be installed with npm: {result.stderr.strip()[-300:]}")
    return script


def _query(tmp_path: Path, sql: str) -> list[tuple[object, ...]]:
    """Rows from the served process's own database (SQLite file or PostgreSQL)."""
    import sqlalchemy
    from _databases import folder_database_url

    engine = sqlalchemy.create_engine(folder_database_url(tmp_path, "served.db"))
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sqlalchemy.text(sql))]
    finally:
        engine.dispose()


def _admin_pages(tmp_path: Path, ids: dict[str, int]) -> list[str]:
    """Every admin GET page (from the app's url_map), with real ids filled in."""
    from _databases import folder_database_url

    from newsletter.config import load_settings
    from newsletter.context import Context
    from newsletter.web.app import create_app, web_state

    ctx = Context.open(
        load_settings(
            {
                "NEWSLETTER_DATABASE_URL": folder_database_url(tmp_path, "served.db"),
                "NEWSLETTER_SECRET_KEY": "x" * 20,
            },
            dotenv_path=None,
        )
    )
    try:
        app = create_app(ctx)
        rules = [r for r in app.url_map.iter_rules() if r.endpoint.startswith("admin.")]
        web_state(app).mailer.close()
    finally:
        ctx.close()
    not_pages = {"admin.asset", "admin.issue_progress", "admin.export_readers",
                 "admin.next_preview_frame", "admin.issue_frozen"}  # fmt: skip
    pages = []
    for rule in rules:
        if "GET" not in (rule.methods or ()) or rule.endpoint in not_pages:
            continue
        path = rule.rule
        for arg in rule.arguments:
            path = re.sub(r"<(?:[a-z]+:)?" + arg + ">", str(ids[arg]), path)
        pages.append(path)
    return sorted(set(pages))


def test_axe_finds_no_wcag_a_or_aa_violation_on_any_admin_page(
    browser: Any, desk: ServedApp, smtp: SMTPServer, tmp_path: Path
) -> None:
    script = axe_script().read_text()
    env = desk.env
    _cli(env, tmp_path, "stories", "import", str(FEED), "--feature")
    _cli(env, tmp_path, "send", "--yes")
    _cli(env, tmp_path, "stories", "add", "--title", "Tomorrow's lead", "--url",
         "https://news.example.com/t", "--feature")  # fmt: skip
    ids = {
        "issue_id": int(_query(tmp_path, "SELECT max(id) FROM issues")[0][0]),
        "reader_id": int(_query(tmp_path, "SELECT min(id) FROM subscribers")[0][0]),
        "story_id": int(_query(tmp_path, "SELECT min(id) FROM stories")[0][0]),
    }
    pages = _admin_pages(tmp_path, ids)
    assert len(pages) >= 12, pages
    context = browser.new_context(bypass_csp=True)  # axe is injected as an inline script
    page = context.new_page()
    _answer_images(page)
    results: dict[str, list[str]] = {}

    def audit(path: str) -> None:
        page.goto(desk.base + path)
        page.add_script_tag(content=script)
        found = page.evaluate(
            "tags => axe.run(document, {runOnly: {type: 'tag', values: tags}})"
            ".then(r => r.violations.map(v => v.id + ': ' + v.help + ' @ ' +"
            " v.nodes.map(n => n.target.join(' ')).slice(0, 3).join(', ')))",
            WCAG,
        )
        results[path] = found

    audit("/admin/login")
    page.fill("#email", EDITOR)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("h1:has-text('Dashboard')")
    for path in pages:
        if path != "/admin/login":
            audit(path)
    context.close()
    assert set(results) >= set(pages)
    bad = {path: found for path, found in results.items() if found}
    assert not bad, bad
