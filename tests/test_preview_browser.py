"""The preview in Debian's headless chromium: 600 px desktop, 375 px phone, dark mode.

Story images are remote URLs; the page's requests are answered locally with a
real 1200x675 PNG (wider than any phone) so the layout is tested with pictures in
place, and nothing leaves the machine.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _digest_support import feature_dated, import_fixture_feeds
from click.testing import CliRunner
from conftest import CHROMIUM_ARGS, chromium_path

from newsletter.cli import main
from newsletter.config import Settings
from newsletter.context import Context

pytestmark = pytest.mark.browser


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A solid-colour PNG, built by hand (no imaging library needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


IMAGE = png(1200, 675, (96, 125, 139))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def preview_file(
    cli_env: dict[str, str], settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    monkeypatch.setenv("NEWSLETTER_LANGUAGE", "es")
    ctx = Context.open(settings)
    try:
        import_fixture_feeds(ctx)
        feature_dated(ctx, 10)
    finally:
        ctx.close()
    result = CliRunner().invoke(main, ["preview", "--name", "Ana María", "-o", "digest.html"])
    assert result.exit_code == 0, result.output
    return tmp_path / "digest.html"


def _route(route: Any) -> None:
    url = route.request.url
    if url.startswith("file:"):
        route.continue_()
    elif route.request.resource_type == "image":
        route.fulfill(status=200, content_type="image/png", body=IMAGE)
    else:
        route.abort()


def _open(browser: Any, path: Path, width: int, scheme: str = "light") -> Any:
    page = browser.new_page(viewport={"width": width, "height": 900}, color_scheme=scheme)
    page.route("**/*", _route)
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page


LAYOUT = """() => {
  const box = (sel) => document.querySelector(sel).getBoundingClientRect();
  const imgs = [...document.images];
  return {
    scrollWidth: document.documentElement.scrollWidth,
    bodyScrollWidth: document.body.scrollWidth,
    innerWidth: window.innerWidth,
    container: box('.container').width,
    images: imgs.map(i => ({w: i.getBoundingClientRect().width, natural: i.naturalWidth,
                             right: i.getBoundingClientRect().right})),
    widest: Math.max(...[...document.querySelectorAll('body *')]
                       .map(e => e.getBoundingClientRect().right)),
    leadSize: getComputedStyle(document.querySelector('.lead-title')).fontSize,
    cardBg: getComputedStyle(document.querySelector('.container')).backgroundColor,
    height: document.documentElement.scrollHeight,
    lang: document.documentElement.lang,
    widthAttrs: imgs.map(i => i.getAttribute('width')),
    heightAttrs: imgs.filter(i => i.hasAttribute('height')).length,
    preheaderShown: document.querySelector('.preheader').offsetHeight > 0,
    footer: document.querySelector('.footer').innerText,
  };
}"""


def test_desktop_600(browser: Any, preview_file: Path, tmp_path: Path) -> None:
    page = _open(browser, preview_file, 600)
    layout = page.evaluate(LAYOUT)
    page.screenshot(path=str(tmp_path / "preview-600.png"), full_page=True)
    page.close()
    assert layout["container"] == 600
    assert layout["scrollWidth"] <= layout["innerWidth"]
    assert len(layout["images"]) == 10
    lead, *thumbs = layout["images"]
    assert lead["natural"] == 1200 and lead["w"] == 552  # the lead at full width
    assert all(i["natural"] == 1200 and i["w"] <= 200 for i in thumbs)  # thumbnails
    assert layout["widthAttrs"] == ["552"] + ["120"] * 9 and layout["heightAttrs"] == 0
    assert layout["height"] < 3000  # a newsroom briefing, not 6,000 px of cards
    assert layout["lang"] == "es"  # NEWSLETTER_LANGUAGE
    assert layout["leadSize"] == "26px"
    assert not layout["preheaderShown"]
    assert "Unsubscribe" in layout["footer"] and "View in browser" in layout["footer"]
    assert "1 Fleet Street, London EC4Y 1AA" in layout["footer"]


def test_phone_375_has_no_horizontal_overflow(
    browser: Any, preview_file: Path, tmp_path: Path
) -> None:
    page = _open(browser, preview_file, 375)
    layout = page.evaluate(LAYOUT)
    page.screenshot(path=str(tmp_path / "preview-375.png"), full_page=True)
    page.close()
    assert layout["scrollWidth"] <= layout["innerWidth"] == 375
    assert layout["bodyScrollWidth"] <= 375
    assert layout["widest"] <= 375
    assert all(i["natural"] == 1200 and i["right"] <= 375 for i in layout["images"])
    lead, *thumbs = layout["images"]
    assert lead["w"] <= 375 - 32 and all(i["w"] <= 88 for i in thumbs)
    assert layout["widthAttrs"] == ["552"] + ["120"] * 9
    assert layout["lang"] == "es"
    assert layout["height"] < 4000
    assert layout["leadSize"] == "22px"  # the phone media query survived premailer


def test_dark_mode_colours(browser: Any, preview_file: Path, tmp_path: Path) -> None:
    page = _open(browser, preview_file, 375, scheme="dark")
    layout = page.evaluate(LAYOUT)
    page.screenshot(path=str(tmp_path / "preview-dark.png"))
    page.close()
    assert layout["cardBg"] == "rgb(30, 30, 30)"
    light = _open(browser, preview_file, 375)
    assert light.evaluate(LAYOUT)["cardBg"] == "rgb(255, 255, 255)"
    light.close()
