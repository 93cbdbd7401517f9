"""Save screenshots of the digest (600 px, 375 px, dark) and of every public page to docs/img/.

Everything is real and local: the digest is built from the project's own fixture
feeds (tests/fixtures/feeds) and previewed as a subscriber named Ana would get it;
the pages come from the Flask app (a reader's path: subscribe, confirm, unsubscribe,
archive...), with confirmation mail going to an SMTP server on 127.0.0.1. Story
pictures are answered with a plain 1200x675 PNG, so nothing leaves the machine.
Needs Debian's chromium and the test extra (playwright, aiosmtpd).

Run: ``python docs/screenshots.py``
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "img"
sys.path.insert(0, str(ROOT / "tests"))

from _digest_support import base_env, feature_dated, open_ctx  # noqa: E402
from _web_support import Web, web_settings  # noqa: E402
from conftest import CHROMIUM_ARGS, start_smtp  # noqa: E402
from test_pages import fetch, pages  # noqa: E402
from test_preview_browser import IMAGE  # noqa: E402

from newsletter.cli.preview import build_preview  # noqa: E402
from newsletter.context import Context  # noqa: E402
from newsletter.stories import import_sources  # noqa: E402
from newsletter.web import create_app, web_state  # noqa: E402

FEEDS = [
    ROOT / "tests" / "fixtures" / "feeds" / n
    for n in ("planet.xml", "gazeta.xml", "wire.xml", "courier.atom")
]


def shoot(browser: Any, url: str, html: str, path: Path, width: int, scheme: str = "light") -> None:
    page = browser.new_page(viewport={"width": width, "height": 900}, color_scheme=scheme)

    def route(request_route: Any) -> None:
        if request_route.request.url == url:
            request_route.fulfill(status=200, content_type="text/html; charset=utf-8", body=html)
        elif request_route.request.resource_type == "image":
            request_route.fulfill(status=200, content_type="image/png", body=IMAGE)
        else:
            request_route.abort()

    page.route("**/*", route)
    page.goto(url)
    page.wait_for_load_state("load")
    page.screenshot(path=str(path), full_page=True)
    page.close()
    print(f"wrote {path.relative_to(ROOT)}")


def digest_html(folder: Path) -> str:
    ctx = open_ctx(folder)
    try:
        with ctx.db.write() as session:
            assert import_sources(session, [str(f) for f in FEEDS], feature=False).ok
        feature_dated(ctx, 10)
        preview = build_preview(ctx, name="Ana María López", editor_note="Polls open at 8 a.m.")
        assert preview is not None
        return preview.html
    finally:
        ctx.close()


def page_html(folder: Path) -> dict[str, str]:
    smtp = start_smtp()
    ctx = Context.open(web_settings(base_env(folder / "web"), NEWSLETTER_SMTP_URL=smtp.url))
    try:
        web = Web(ctx, create_app(ctx), smtp)
        client = web.client()
        found = {name: fetch(client, *spec)[1] for name, spec in pages(web).items()}
        web_state(web.app).mailer.close()
        return found
    finally:
        ctx.close()
        smtp.controller.stop()


def main() -> None:
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "web").mkdir()
        digest = digest_html(folder)
        found = page_html(folder)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
        )
        url = "https://news.example.com/preview"
        shoot(browser, url, digest, OUT / "digest-600.png", 600)
        shoot(browser, url, digest, OUT / "digest-375.png", 375)
        shoot(browser, url, digest, OUT / "digest-dark.png", 600, scheme="dark")
        for name, html in found.items():
            html = html.replace('document.getElementById("confirm-form").submit();', "")
            shoot(browser, f"https://news.example.com/{name}", html, OUT / f"page-{name}.png", 600)
        browser.close()


if __name__ == "__main__":
    main()
