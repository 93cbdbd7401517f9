"""Client-safe digest HTML: the attributes Outlook and the W3C checker care about, and
SpamAssassin's verdict on the whole message.

There is no W3C validator on this machine, so the attribute rules the template and
premailer could break are checked here from the HTML standard: numeric ``width`` /
``height`` on images, none of the obsolete presentational attributes (``align``,
``bgcolor``, ``cellpadding``...), registered ``<meta name>`` values only, a valid
``lang``.  The document is parsed with html5lib, the HTML standard's own parser.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import html5lib
import pytest
from _digest_support import feature_dated, import_fixture_feeds
from click.testing import CliRunner

from newsletter.cli import main
from newsletter.config import Settings
from newsletter.context import Context

# Obsolete in HTML (the W3C checker reports each one as an error), per element.
OBSOLETE = {
    "*": {"align", "valign", "bgcolor", "background", "char", "charoff"},
    "table": {"cellpadding", "cellspacing", "border", "width", "frame", "rules", "summary"},
    "td": {"width", "height", "nowrap", "abbr", "axis", "scope"},
    "th": {"width", "height", "nowrap"},
    "tr": {"height"},
    "img": {"border", "hspace", "vspace", "longdesc", "name"},
    "body": {"link", "vlink", "alink", "text", "marginwidth", "marginheight", "leftmargin"},
    "html": {"xmlns", "version"},
}
# <meta name> values the checker accepts (standard and registered MetaExtensions).
META_NAMES = {"viewport", "color-scheme", "description", "robots", "referrer", "theme-color"}
NON_NEGATIVE_INTEGER = re.compile(r"[0-9]+")
LANG = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*")


@pytest.fixture
def digest_eml(
    cli_env: dict[str, str], settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    monkeypatch.setenv("NEWSLETTER_LANGUAGE", "es")
    ctx = Context.open(settings)
    try:
        import_fixture_feeds(ctx)
        feature_dated(ctx, 10)
    finally:
        ctx.close()
    out = tmp_path / "digest.eml"
    result = CliRunner().invoke(
        main,
        ["preview", "--eml", "--name", "Ana María", "--note", "Polls open at 8.", "-o", str(out)],
    )
    assert result.exit_code == 0, result.output
    return out


def html_part(eml: Path) -> str:
    import email
    import email.policy

    msg = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    body = msg.get_body(("html",))  # type: ignore[attr-defined]
    assert body is not None
    return str(body.get_content())


def attribute_problems(html: str) -> list[str]:
    """Every attribute the W3C checker would call an error, as readable lines."""
    parser = html5lib.HTMLParser(tree=html5lib.getTreeBuilder("etree"), namespaceHTMLElements=False)
    root = parser.parse(html)
    problems = [f"parse error {code} at {pos}" for pos, code, _ in parser.errors]
    for element in root.iter():
        tag = element.tag if isinstance(element.tag, str) else ""
        attrs = dict(element.attrib)
        for name in attrs:
            if name in OBSOLETE["*"] or name in OBSOLETE.get(tag, set()):
                problems.append(f"<{tag} {name}> is obsolete")
        if tag == "img":
            for name in ("width", "height"):
                if name in attrs and not NON_NEGATIVE_INTEGER.fullmatch(attrs[name]):
                    problems.append(f"<img {name}={attrs[name]!r}> is not a pixel count")
            if "width" not in attrs:
                problems.append(f"<img src={attrs.get('src', '')[:40]!r}> has no width")
            if "alt" not in attrs:
                problems.append("<img> without alt")
        if tag == "meta" and "name" in attrs:
            if attrs["name"] not in META_NAMES:
                problems.append(f"<meta name={attrs['name']!r}> is not a registered name")
            if "content" not in attrs:
                problems.append(f"<meta name={attrs['name']!r}> has no content")
        if "lang" in attrs and not LANG.fullmatch(attrs["lang"]):
            problems.append(f"lang={attrs['lang']!r} is not a language tag")
    return problems


def test_every_image_has_a_numeric_width_and_no_height_auto(digest_eml: Path) -> None:
    html = html_part(digest_eml)
    images = re.findall(r"<img\b[^>]*>", html)
    assert len(images) == 10
    for tag in images:
        assert re.search(r'\swidth="\d+"', tag), tag
        assert 'height="auto"' not in tag and 'width="100%"' not in tag, tag
        assert "max-width:" in tag  # fluid on phones through CSS, not attributes
    assert 'width="552"' in images[0] and all('width="120"' in t for t in images[1:])


def test_no_attribute_errors_for_the_html_checker(digest_eml: Path) -> None:
    html = html_part(digest_eml)
    assert attribute_problems(html) == []
    assert '<html lang="es">' in html


def test_the_checker_would_catch_what_premailer_used_to_write() -> None:
    """The rules above are not vacuous: premailer's old output fails them."""
    old = (
        '<!DOCTYPE html><html lang="en"><head><title>t</title>'
        '<meta name="x-apple-disable-message-reformatting"></head><body>'
        '<table width="100%" cellpadding="0"><tr><td align="center">'
        '<img src="https://x.example/a.jpg" width="100%" height="auto" alt="">'
        "</td></tr></table></body></html>"
    )
    problems = attribute_problems(old)
    assert "<img width='100%'> is not a pixel count" in problems
    assert "<img height='auto'> is not a pixel count" in problems
    assert "<table cellpadding> is obsolete" in problems and "<td align> is obsolete" in problems
    assert any("x-apple-disable-message-reformatting" in p for p in problems)


def test_preheader_is_hidden_without_low_contrast_tricks(digest_eml: Path) -> None:
    html = html_part(digest_eml)
    match = re.search(r'<div class="preheader[^"]*" style="([^"]*)"', html)
    assert match, html[:2000]
    style = match.group(1).replace(" ", "")
    assert "display:none" in style
    for trick in ("color:", "opacity", "font-size:1px", "font-size:0"):
        assert trick not in style


def spamassassin() -> str:
    found = shutil.which("spamassassin")
    if found:
        return found
    message = "SpamAssassin is not installed (apt-get install spamassassin)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def spam_report(eml: Path) -> tuple[float, str]:
    """SpamAssassin's score (local tests only, -L: no network) and its report."""
    run = subprocess.run(
        [spamassassin(), "-L", "-t"], input=eml.read_bytes(), capture_output=True, timeout=300
    )
    output = run.stdout.decode("utf-8", "replace")
    match = re.search(r"^X-Spam-Status: \w+, score=(-?[0-9.]+)", output, re.MULTILINE)
    assert match, output[-2000:]
    return float(match.group(1)), output


def test_spamassassin_scores_the_digest_at_most_half_a_point(digest_eml: Path) -> None:
    score, report = spam_report(digest_eml)
    assert "HTML_FONT_LOW_CONTRAST" not in report
    assert score <= 0.5, report[report.find("Content analysis") :]
