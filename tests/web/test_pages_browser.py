"""Every public page in Debian's chromium, checked with axe-core's landmark rules.

axe-core (MPL-2.0, by Deque) is vendored unmodified in tests/fixtures/axe/. Pages are
fetched through the real Flask app in the order a reader meets them (subscribe,
confirm, unsubscribe...), then loaded into chromium at their own URL; nothing leaves
the machine (story images are answered with a local PNG).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _web_support import Web, make_web, web
from conftest import CHROMIUM_ARGS, OWN, chromium_path
from test_pages import fetch, pages
from test_preview_browser import IMAGE

__all__ = ["make_web", "web"]  # fixtures
pytestmark = pytest.mark.browser

AXE = OWN / "axe" / "axe.min.js"
LANDMARK_RULES = [
    "landmark-one-main",
    "region",
    "landmark-banner-is-top-level",
    "landmark-contentinfo-is-top-level",
    "landmark-main-is-top-level",
    "landmark-complementary-is-top-level",
    "landmark-no-duplicate-banner",
    "landmark-no-duplicate-contentinfo",
    "landmark-no-duplicate-main",
    "landmark-unique",
    "page-has-heading-one",
    "html-has-lang",
    "html-lang-valid",
]


def axe_source() -> str:
    if AXE.is_file():
        return AXE.read_text(encoding="utf-8")
    message = f"axe-core is missing: {AXE} (npm pack axe-core; copy its axe.min.js there)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def open_html(browser: Any, url: str, html: str, width: int = 600, scheme: str = "light") -> Any:
    """Load ``html`` at ``url`` in a fresh page (images answered locally)."""
    page = browser.new_page(viewport={"width": width, "height": 900}, color_scheme=scheme)

    def route(route: Any) -> None:
        if route.request.url == url:
            route.fulfill(status=200, content_type="text/html; charset=utf-8", body=html)
        elif route.request.resource_type == "image":
            route.fulfill(status=200, content_type="image/png", body=IMAGE)
        else:
            route.abort()

    page.route("**/*", route)
    page.goto(url)
    page.wait_for_load_state("load")
    return page


def rendered_pages(web: Web) -> dict[str, str]:
    """name -> HTML of every public page, fetched in the order a reader meets them."""
    client = web.client()
    return {name: fetch(client, *spec)[1] for name, spec in pages(web).items()}


def test_axe_landmark_rules_pass_on_every_page(browser: Any, web: Web, tmp_path: Path) -> None:
    source = axe_source()
    found = rendered_pages(web)
    assert len(found) == 13
    failures: dict[str, list[str]] = {}
    for name, html in found.items():
        # The confirm page submits itself by script: axe checks it as served, scripts off.
        html = html.replace('document.getElementById("confirm-form").submit();', "")
        page = open_html(browser, f"https://news.example.com/{name}", html)
        page.evaluate(source)
        result = page.evaluate(
            "rules => axe.run(document, {runOnly: {type: 'rule', values: rules}})",
            LANDMARK_RULES,
        )
        page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
        page.close()
        assert len(result["passes"]) + len(result["inapplicable"]) > 0
        bad = [f"{v['id']}: {v['nodes'][0]['target']}" for v in result["violations"]]
        if bad:
            failures[name] = bad
    assert failures == {}


def test_axe_finds_a_page_without_landmarks(browser: Any) -> None:
    """The check is not vacuous: the old page layout (a div header and footer) fails it."""
    source = axe_source()
    html = (
        '<!doctype html><html lang="en"><head><title>t</title></head><body>'
        '<div class="masthead"><a href="/">Site</a></div><main><h1>Hi</h1></main>'
        '<div class="footer">1 Fleet Street</div></body></html>'
    )
    page = open_html(browser, "https://news.example.com/old", html)
    page.evaluate(source)
    result = page.evaluate(
        "rules => axe.run(document, {runOnly: {type: 'rule', values: rules}})", LANDMARK_RULES
    )
    page.close()
    assert "region" in {v["id"] for v in result["violations"]}


def test_archived_issue_layout_at_600_and_375(browser: Any, web: Web) -> None:
    html = rendered_pages(web)["issue"]
    for width in (600, 375):
        page = open_html(browser, "https://news.example.com/issue", html, width=width)
        layout = page.evaluate(
            """() => ({
              scrollWidth: document.documentElement.scrollWidth,
              images: [...document.images].map(i => i.getBoundingClientRect().width),
              lang: document.documentElement.lang,
              cta: !!document.querySelector('main a.button[href="/subscribe"]'),
            })"""
        )
        page.close()
        assert layout["scrollWidth"] <= width
        assert layout["cta"] and layout["lang"] == "en"
        assert layout["images"] and max(layout["images"]) <= width
