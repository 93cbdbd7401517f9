"""Rendering: the frozen HTML/text/subject from real feeds, hostile stories, template rules."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import lxml.html
import pytest
from _digest_support import FrozenIssue, add_story, fixture_digest, open_ctx

from newsletter.context import Context
from newsletter.mail import render
from newsletter.mail.render import (
    ARCHIVE_URL,
    GREETING,
    PLACEHOLDERS,
    UNSUBSCRIBE_URL,
    TemplateProblem,
    http_url,
    public_copy,
    render_confirmation,
    render_issue,
)

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
URL_ATTRS = ("href", "src", "background", "action", "srcset", "formaction", "poster")


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrozenIssue]:
    ctx = open_ctx(tmp_path_factory.mktemp("render"))
    yield fixture_digest(ctx)
    ctx.close()


def all_urls(html: str) -> list[str]:
    doc = lxml.html.document_fromstring(html)
    return [el.get(a) for el in doc.iter() for a in URL_ATTRS if el.get(a) is not None]


def test_digest_html_from_fixture_feeds(frozen: FrozenIssue) -> None:
    html = frozen.html
    assert html.startswith("<!DOCTYPE html>")
    doc = lxml.html.document_fromstring(html)
    # Inlined once by premailer; the media queries stay in a <style> block.
    styles = " ".join(s.text_content() for s in doc.iter("style"))
    assert "@media screen and (max-width: 599px)" in styles
    assert "prefers-color-scheme: dark" in styles and "!important" in styles
    assert doc.xpath("//meta[@name='color-scheme']")
    assert all("style" in td.attrib for td in doc.iter("td") if td.get("class"))
    # One lead (h2, "Read the story") and nine compact items (h3), each linked.
    titles = doc.xpath(
        "//h2[contains(@class,'lead-title')]/a | //h3[contains(@class,'item-title')]/a"
    )
    assert len(titles) == 10
    assert len(doc.xpath("//h2")) == 1
    assert all(a.get("href", "").startswith(("http://", "https://")) for a in titles)
    assert len(doc.xpath("//p[contains(@class,'more')]/a")) == 1
    assert all(p.text_content().strip() for p in doc.xpath("//p[contains(@class,'kicker')]"))
    images = doc.xpath("//img")
    assert len(images) == 10  # fixture_digest features stories that have an image
    for img in images:
        assert img.get("alt")
        assert img.get("src", "").startswith(("http://", "https://"))
    assert images[0].get("width") == "552"
    assert all(img.get("width") == "120" for img in images[1:])
    # Hidden preheader carrying the lead headlines.
    pre = doc.xpath("//div[contains(@class,'preheader')]")[0]
    assert "display: none" in pre.get("style") or "display:none" in pre.get("style")
    assert titles[0].text_content().strip()[:30] in pre.text_content()
    # Footer: why, unsubscribe, view in browser, postal address.
    footer = doc.xpath("//td[contains(@class,'footer')]")[0].text_content()
    assert "because you subscribed" in footer
    assert "1 Fleet Street, London EC4Y 1AA" in footer
    assert UNSUBSCRIBE_URL in all_urls(html) and ARCHIVE_URL in all_urls(html)
    assert GREETING in html
    for url in all_urls(html):
        assert url.startswith(("http://", "https://")) or url in PLACEHOLDERS
    assert len(html.encode()) < 60 * 1024  # well under Gmail's 102 KB clip


def test_text_part_reads_like_text(frozen: FrozenIssue) -> None:
    text = frozen.text
    assert "<" not in text.replace("<http", "")  # no markup
    assert "&amp;" not in text and "&#" not in text
    assert text.startswith("THE DAILY DIGEST\n")
    assert GREETING in text and UNSUBSCRIBE_URL in text and ARCHIVE_URL in text
    assert "1 Fleet Street, London EC4Y 1AA" in text
    assert text.count("Read the story: http") == 1
    assert "In this issue:" in text and "MORE STORIES" in text
    for number in range(1, 10):
        assert f"\n{number}." in text
    prose = [line for line in text.splitlines() if "http" not in line and "__NL_" not in line]
    assert max(len(line) for line in prose) <= 78
    assert "\n\n\n" not in text


def test_subject_has_site_date_and_lead_within_78(frozen: FrozenIssue) -> None:
    assert len(frozen.subject) <= 78
    assert frozen.subject.startswith("The Daily Digest – ")
    doc = lxml.html.document_fromstring(frozen.html)
    lead = doc.xpath("//h2[contains(@class,'lead-title')]/a")[0].text_content().strip()
    assert lead[:20] in frozen.subject


def _render_one(ctx: Context, **fields: object) -> render.Rendered:
    with ctx.db.write() as session:
        story = add_story(session, **fields)
        return render_issue(ctx, [story], date(2026, 11, 27))


def test_long_headline_is_shortened_at_a_word(ctx: Context) -> None:
    title = "An extraordinarily long headline about " + "many important things " * 6
    rendered = _render_one(ctx, title=title)
    assert len(rendered.subject) <= 78
    assert rendered.subject.startswith("The Daily Digest – 27 Nov: An extraordinarily long")
    assert rendered.subject.endswith("…")
    assert not rendered.subject[:-1].endswith(" ")


def test_hostile_story_is_inert(ctx: Context) -> None:
    rendered = _render_one(
        ctx,
        title="<script>alert('t')</script> \"Quoted\" & 'single' __NL_UNSUBSCRIBE_URL__",
        url="javascript:alert(document.cookie)",
        summary='<img src=x onerror="alert(1)"> "><svg onload=alert(2)> & more',
        image_url="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
        image_alt='" onmouseover="alert(3)',
        author="<b>Mallory</b>",
    )
    html = rendered.html
    doc = lxml.html.document_fromstring(html)
    assert not list(doc.iter("script", "svg", "iframe"))
    assert "javascript:" not in html.lower()
    assert "data:text/html" not in html
    for el in doc.iter():
        for name in el.attrib:
            assert not name.lower().startswith("on"), name
    for url in all_urls(html):
        assert url.startswith(("http://", "https://")) or url in PLACEHOLDERS
    # The title is shown as text, escaped, unlinked (its URL was not http(s)).
    title = doc.xpath("//h2[contains(@class,'title')]")[0]
    assert title.text_content().strip() == "<script>alert('t')</script> \"Quoted\" & 'single'"
    assert not title.xpath(".//a")
    assert "&lt;script&gt;" in html
    assert html.count(UNSUBSCRIBE_URL) == 1  # the look-alike in the title was removed
    # The text part shows the words as written, and never the javascript: link.
    assert "<script>alert('t')</script> \"Quoted\" & 'single'" in rendered.text
    assert "javascript" not in rendered.text.lower()
    assert "\r" not in rendered.subject and "\n" not in rendered.subject


def test_control_characters_never_reach_the_subject(ctx: Context) -> None:
    rendered = _render_one(ctx, title="Breaking\r\nBcc: victim@example.com\x00\u2028 news")
    assert rendered.subject == "The Daily Digest – 27 Nov: Breaking Bcc: victim@example.com news"


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://example.com/a?b=1&c=2", True),
        ("http://example.com", True),
        ("HTTPS://EXAMPLE.COM/", True),
        ("javascript:alert(1)", False),
        ("JavaScript:alert(1)", False),
        (" javascript:alert(1)", False),
        ("java\tscript:alert(1)", False),
        ("data:text/html,x", False),
        ("vbscript:x", False),
        ("//example.com/x", False),
        ("/relative", False),
        ("https://exa mple.com", False),
        ("https://", False),
        ("mailto:a@example.com", False),
        ("", False),
        (None, False),
    ],
)
def test_http_url(url: str | None, ok: bool) -> None:
    assert (http_url(url) is not None) is ok


def _custom_templates(tmp_path: Path) -> Path:
    folder = tmp_path / "custom"
    shutil.copytree(TEMPLATES, folder)
    return folder


def test_autoescape_on_for_html_whatever_the_file_name(tmp_path: Path) -> None:
    folder = _custom_templates(tmp_path)
    (folder / "email" / "card.tpl").write_text(
        '<p class="x">{{ story.title }}</p><a href="{{ story.url }}">x</a>'
    )
    html = (folder / "email" / "digest.html").read_text()
    loop = "{% for story in stories %}"
    include = loop + '{% include "card.tpl" %}'
    (folder / "email" / "digest.html").write_text(html.replace(loop, include, 1))
    ctx = open_ctx(tmp_path, NEWSLETTER_TEMPLATES_DIR=str(folder))
    try:
        rendered = _render_one(ctx, title="Tom & Jerry <b>bold</b>", url="https://e.com/?a=1&b=2")
    finally:
        ctx.close()
    assert '<p class="x">Tom &amp; Jerry &lt;b&gt;bold&lt;/b&gt;</p>' in rendered.html
    assert "Tom & Jerry <b>bold</b>" in rendered.text  # text part: not escaped


def test_template_without_unsubscribe_is_refused(tmp_path: Path) -> None:
    folder = _custom_templates(tmp_path)
    text = (folder / "email" / "digest.txt").read_text()
    (folder / "email" / "digest.txt").write_text(text.replace("{{ unsubscribe_url }}", ""))
    ctx = open_ctx(tmp_path, NEWSLETTER_TEMPLATES_DIR=str(folder))
    try:
        with pytest.raises(TemplateProblem, match="unsubscribe_url"):
            _render_one(ctx)
    finally:
        ctx.close()


def test_template_href_to_javascript_is_dropped(tmp_path: Path) -> None:
    folder = _custom_templates(tmp_path)
    html = (folder / "email" / "digest.html").read_text()
    (folder / "email" / "digest.html").write_text(
        html.replace("</body>", '<a href="javascript:x()">bad</a><script>x()</script></body>')
    )
    ctx = open_ctx(tmp_path, NEWSLETTER_TEMPLATES_DIR=str(folder))
    try:
        rendered = _render_one(ctx)
    finally:
        ctx.close()
    assert "javascript:" not in rendered.html and "<script" not in rendered.html
    assert ">bad</a>" in rendered.html


def test_oversized_html_warns_about_gmail_clipping(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _custom_templates(tmp_path)
    html = (folder / "email" / "digest.html").read_text()
    padding = "{% for _ in range(2500) %}<p>Filler paragraph with some words.</p>{% endfor %}"
    (folder / "email" / "digest.html").write_text(html.replace("</body>", padding + "</body>"))
    ctx = open_ctx(tmp_path, NEWSLETTER_TEMPLATES_DIR=str(folder))
    try:
        with caplog.at_level(logging.WARNING, logger="newsletter.render"):
            rendered = _render_one(ctx)
    finally:
        ctx.close()
    assert len(rendered.html.encode()) > 102 * 1024
    assert any("Gmail clips" in r.getMessage() for r in caplog.records)


def test_normal_digest_does_not_warn(ctx: Context, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="newsletter.render"):
        _render_one(ctx)
    assert not [r for r in caplog.records if "Gmail" in r.getMessage()]


def test_public_copy_has_no_reader_parts(frozen: FrozenIssue) -> None:
    html = public_copy(frozen.html, base_url="https://news.example.com", issue_id=frozen.issue_id)
    assert "__NL_" not in html
    assert f"https://news.example.com/archive/{frozen.issue_id}" in html
    assert "Hello," not in html  # no greeting at all for a visitor


def test_confirmation_email(ctx: Context) -> None:
    rendered = render_confirmation(ctx, "Ana <b>", "https://news.example.com/confirm/tok.en")
    assert "Hi Ana &lt;b&gt;," in rendered.html
    assert "Hi Ana <b>," in rendered.text
    assert 'href="https://news.example.com/confirm/tok.en"' in rendered.html
    assert "https://news.example.com/confirm/tok.en" in rendered.text
    assert "1 Fleet Street" in rendered.html and "1 Fleet Street" in rendered.text
    assert rendered.subject == "Confirm your subscription to The Daily Digest"
    with pytest.raises(ValueError):
        render_confirmation(ctx, "x", "javascript:alert(1)")
