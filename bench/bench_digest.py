"""Benchmark: what a 10-story digest from four fixture feeds weighs and how filters see it.

Prints figures (not a pass/fail test): the HTML and whole-message sizes, SpamAssassin's
score (``spamassassin -L -t``: local rules only, no network) with the rules that fired,
and the rendered height in Debian's chromium at 600 and 375 px (images answered with
a 1200x675 PNG). Feed sets: the project's own fixtures (planet, gazeta, wire,
courier), and the real shared ones (bbc, theguardian, nytimes, cnn) when
``../shared/fixtures`` is there.

Run: ``python bench/bench_digest.py``
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from _digest_support import feature_dated, open_ctx  # noqa: E402
from test_preview_browser import IMAGE  # noqa: E402

from newsletter.cli.preview import build_preview  # noqa: E402
from newsletter.stories import import_sources  # noqa: E402

OWN = ROOT / "tests" / "fixtures" / "feeds"
SHARED = ROOT.parent / "shared" / "fixtures" / "feeds"
SETS = {
    "own fixtures (planet, gazeta, wire, courier)": [
        OWN / n for n in ("planet.xml", "gazeta.xml", "wire.xml", "courier.atom")
    ],
    "shared fixtures (bbc, theguardian, nytimes, cnn)": [
        SHARED / n for n in ("bbc.xml", "theguardian.xml", "nytimes.xml", "cnn.xml")
    ],
}


def build(feeds: list[Path], folder: Path) -> tuple[str, bytes]:
    ctx = open_ctx(folder)
    try:
        with ctx.db.write() as session:
            assert import_sources(session, [str(f) for f in feeds], feature=False).ok
        feature_dated(ctx, 10)
        preview = build_preview(ctx, name="Ana María López")
        assert preview is not None and preview.story_count == 10
        return preview.html, preview.message.data
    finally:
        ctx.close()


def spam_score(message: bytes) -> tuple[str, str]:
    if not shutil.which("spamassassin"):
        return "not installed", ""
    out = subprocess.run(
        ["spamassassin", "-L", "-t"], input=message, capture_output=True, check=False
    ).stdout.decode("utf-8", "replace")
    match = re.search(r"^X-Spam-Status: \w+, score=(-?[0-9.]+)", out, re.MULTILINE)
    rules = re.search(r"tests=([^\n]*(?:\n\t[^\n]*)*)", out)
    return (match.group(1) if match else "?"), (rules.group(1).replace("\n\t", "") if rules else "")


def heights(html: str, folder: Path) -> dict[int, int]:
    from playwright.sync_api import sync_playwright

    path = folder / "digest.html"
    path.write_text(html, encoding="utf-8")
    out: dict[int, int] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox"]
        )
        for width in (600, 375):
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.route(
                "**/*",
                lambda r: (
                    r.continue_()
                    if r.request.url.startswith("file:")
                    else r.fulfill(status=200, content_type="image/png", body=IMAGE)
                ),
            )
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            out[width] = int(page.evaluate("document.documentElement.scrollHeight"))
            page.close()
        browser.close()
    return out


def main() -> None:
    for label, feeds in SETS.items():
        if not all(f.is_file() for f in feeds):
            print(f"{label}: skipped (missing {feeds[0].parent})")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            html, message = build(feeds, Path(tmp))
            score, rules = spam_score(message)
            tall = heights(html, Path(tmp)) if Path("/usr/bin/chromium").exists() else {}
        print(f"{label}:")
        print(
            f"  HTML {len(html.encode()) / 1024:.1f} KB, whole message {len(message) / 1024:.1f} KB"
        )
        print(f"  SpamAssassin score {score} ({rules})")
        for width, px in tall.items():
            print(f"  height at {width} px: {px:,} px")


if __name__ == "__main__":
    main()
