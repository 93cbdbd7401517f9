"""The newsroom layout: a lead, a compact list, "In this issue", the editor's note,
kickers from sections, a first-name greeting and a footer that says each thing once."""

from __future__ import annotations

from datetime import date

import lxml.html
import pytest
from _digest_support import add_story, open_ctx
from conftest import OWN_FEEDS

from newsletter.context import Context
from newsletter.mail.digest import build_issue
from newsletter.mail.render import GREETING, first_name, greeting_for, render_issue, web_body
from newsletter.stories import import_sources


@pytest.fixture
def planet_issue(tmp_path):  # type: ignore[no-untyped-def]
    ctx = open_ctx(tmp_path, NEWSLETTER_LANGUAGE="pt-BR")
    with ctx.db.write() as session:
        import_sources(session, [str(OWN_FEEDS / "planet.xml")], feature=True)
        issue = build_issue(session, ctx, note="Polls open at 8.\n\nVote early.")
        assert issue is not None
        yield ctx, issue.html, issue.text
    ctx.close()


def test_lead_then_compact_list_with_section_kickers(planet_issue) -> None:  # type: ignore[no-untyped-def]
    _, html, _ = planet_issue
    doc = lxml.html.document_fromstring(html)
    lead = doc.xpath("//td[contains(@class,'lead')]")[0]
    assert lead.xpath(".//h2/a")[0].text_content() == (
        "Harbour tunnel opens a year early, and under budget"
    )
    assert lead.xpath(".//img")[0].get("width") == "552"
    items = doc.xpath("//td[contains(@class,'item') and not(contains(@class,'item-'))]")
    assert len(items) == 5
    kickers = [p.text_content() for p in doc.xpath("//p[contains(@class,'kicker')]")]
    # <category> when the item has one, else the feed title's section; never a domain.
    assert kickers == ["Transport", "City Hall", "Culture", "Metro", "Education", "Food"]
    assert not any("DAILYPLANET" in k.upper().replace(".", "") for k in kickers)
    for item in items:
        assert len(item.xpath(".//img")) <= 1
        for img in item.xpath(".//img"):
            assert int(img.get("width")) <= 200
        summary = item.xpath(".//p[contains(@class,'item-summary')]")
        assert summary and len(summary[0].text_content()) <= 111  # one or two lines


def test_in_this_issue_and_the_editors_note_come_before_the_lead(planet_issue) -> None:  # type: ignore[no-untyped-def]
    _, html, text = planet_issue
    toc = html.index("In this issue:")
    note = html.index("From the editor")
    lead = html.index('class="lead"')
    assert toc < note < lead
    assert "Polls open at 8." in html and "Vote early." in html
    assert "Council votes to keep the night buses running" in html[toc:note]
    assert text.index("In this issue:") < text.index("FROM THE EDITOR") < text.index("TRANSPORT")


def test_language_and_footer_facts_once(planet_issue) -> None:  # type: ignore[no-untyped-def]
    _, html, text = planet_issue
    assert html.startswith('<!DOCTYPE html>\n<html lang="pt-BR">')
    doc = lxml.html.document_fromstring(html)
    footer = doc.xpath("//td[contains(@class,'footer')]")[0].text_content()
    assert footer.count("The Daily Digest") == 1
    assert footer.count("1 Fleet Street, London EC4Y 1AA") == 1
    assert "news.example.com" not in footer  # no "subscribed at <host>"
    assert text.count("1 Fleet Street") == 1
    assert GREETING in html


def test_no_note_no_box(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ctx = open_ctx(tmp_path)
    with ctx.db.write() as session:
        story = add_story(session, title="Only story", section="Sport")
        rendered = render_issue(ctx, [story], date(2026, 11, 30))
    assert "From the editor" not in rendered.html and "FROM THE EDITOR" not in rendered.text
    assert "More stories" not in rendered.html  # one story: only the lead
    ctx.close()


def test_digest_note_setting_is_used_by_scheduled_digests(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ctx = open_ctx(tmp_path, NEWSLETTER_DIGEST_NOTE="Back on Monday.")
    with ctx.db.write() as session:
        add_story(session, title="A story")
        issue = build_issue(session, ctx)
        assert issue is not None and "Back on Monday." in issue.html
    ctx.close()


@pytest.mark.parametrize(
    ("name", "greeting"),
    [
        ("Ana María López", "Hi Ana,"),
        ("  Jürgen ", "Hi Jürgen,"),
        ("", ""),
        ("J.", ""),
        ("reader@example.org", ""),
    ],
)
def test_greeting_uses_the_first_name_or_nothing(name: str, greeting: str) -> None:
    assert greeting_for(name) == greeting
    assert first_name(name) == greeting.removeprefix("Hi ").removesuffix(",")


def test_web_body_drops_every_email_only_line(planet_issue) -> None:  # type: ignore[no-untyped-def]
    ctx, html, _ = planet_issue
    styles, body = web_body(html, base_url="https://news.example.com", issue_id=1)
    assert "@media" in styles
    assert "Harbour tunnel" in body and "In this issue:" in body
    for gone in ("You are receiving", "Unsubscribe", "1 Fleet Street", "__NL_", "preheader"):
        assert gone not in body, gone
    assert isinstance(ctx, Context)
