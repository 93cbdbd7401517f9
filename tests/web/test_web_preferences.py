"""Preferences page, welcome email, re-signup: Flask test client, real SQLite, real SMTP.

The links are taken out of emails that really arrived at the aiosmtpd server.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from _digest_support import add_story
from _web_support import (
    Web,
    csrf_from,
    html_part,
    link,
    make_web,
    path_of,
    subscribe,
    text_part,
    web,
)

from newsletter import delivery, mail
from newsletter.models import Frequency, Subscriber, SubscriberStatus, utcnow

__all__ = ["make_web", "web"]  # fixtures


def _active(web: Web, email: str, name: str = "") -> tuple[int, str]:
    """Subscribe and confirm through the web app; (subscriber id, preferences path)."""
    client = web.client()
    subscribe(client, email, name=name)
    [confirmation] = web.mails_to(email)
    client.post(path_of(link(confirmation.message, "confirm")))
    row = web.subscriber(email)
    assert row is not None and row.status == SubscriberStatus.ACTIVE
    return row.id, path_of(link(confirmation.message, "preferences"))


def _sections(web: Web) -> None:
    with web.ctx.db.write() as session:
        add_story(session, title="Match report", section="Sport")
        add_story(session, title="Chip news", section="Tech")


def _prefs_row(web: Web, email: str) -> tuple[object, ...]:
    row = web.subscriber(email)
    assert row is not None
    return (row.status, row.frequency, row.sections, row.paused_until)


# --------------------------------------------------------------------------- the page


def test_get_shows_the_form_and_changes_nothing(web: Web) -> None:
    _sections(web)
    _, path = _active(web, "reader@example.com")
    before = _prefs_row(web, "reader@example.com")
    resp = web.client().get(path)
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert re.search(r'value="daily" checked', html) and 'value="weekly">' in html
    assert 'value="Sport" checked' in html and 'value="Tech" checked' in html  # all by default
    assert "Pause for 2 weeks" in html and "Pause for 4 weeks" in html
    assert 'action="/unsubscribe/' in html
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["Cache-Control"] == "no-store"
    assert _prefs_row(web, "reader@example.com") == before


def test_post_with_the_page_token_saves_and_says_so(web: Web) -> None:
    _sections(web)
    _, path = _active(web, "saver@example.com")
    client = web.client()
    token = csrf_from(client.get(path).get_data(as_text=True))
    before = utcnow()
    resp = client.post(
        path,
        data={
            "csrf_token": token,
            "frequency": "weekly",
            "sections_shown": "1",
            "section": ["Sport"],
            "pause": "2",
        },
    )
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert "Saved." in html and 'value="weekly" checked' in html
    assert 'value="Sport" checked' in html and 'value="Tech" checked' not in html
    row = web.subscriber("saver@example.com")
    assert row is not None
    assert row.frequency == Frequency.WEEKLY and row.sections == '["Sport"]'
    assert row.paused_until is not None
    assert before + timedelta(weeks=2) <= row.paused_until <= utcnow() + timedelta(weeks=2)
    assert row.status == SubscriberStatus.ACTIVE

    # Every section ticked again is "all" (new sections included later); end the pause.
    resp = client.post(
        path,
        data={
            "csrf_token": token,
            "frequency": "daily",
            "sections_shown": "1",
            "section": ["Sport", "Tech"],
            "pause": "resume",
        },
    )
    assert resp.status_code == 200
    assert _prefs_row(web, "saver@example.com") == (
        SubscriberStatus.ACTIVE,
        Frequency.DAILY,
        None,
        None,
    )


def test_post_without_csrf_or_with_bad_choices_saves_nothing(web: Web) -> None:
    _sections(web)
    _, path = _active(web, "careful@example.com")
    before = _prefs_row(web, "careful@example.com")
    client = web.client()
    bare = web.app.test_client().post(path, data={"frequency": "weekly"})
    assert bare.status_code == 400
    token = csrf_from(client.get(path).get_data(as_text=True))
    for data in (
        {"frequency": "hourly"},
        {"frequency": "weekly", "sections_shown": "1"},  # no section left
        {"frequency": "weekly", "pause": "52"},
    ):
        resp = client.post(path, data={"csrf_token": token, **data})
        assert resp.status_code == 400, data
        assert "Saved." not in resp.get_data(as_text=True)
    assert _prefs_row(web, "careful@example.com") == before


def test_tampered_or_foreign_tokens_are_400(web: Web) -> None:
    sid, path = _active(web, "tamper@example.com")
    client = web.client()
    token = path.rsplit("/", 1)[1]
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    unsubscribe_token = web.ctx.tokens.unsubscribe(sid)
    for bad in (flipped, unsubscribe_token, "x" * 600, "not-a-token"):
        assert client.get(f"/preferences/{bad}").status_code == 400, bad
        assert client.post(f"/preferences/{bad}", data={}).status_code == 400, bad
    unknown = web.ctx.tokens.preferences(999_999)
    assert client.get(f"/preferences/{unknown}").status_code == 404


def test_every_digest_links_the_readers_own_preferences_in_both_parts(web: Web) -> None:
    _sections(web)
    sid, _ = _active(web, "linked@example.com")
    with web.ctx.db.write() as session:
        issue = mail.build_issue(session, web.ctx)
        assert issue is not None
        issue_id = issue.id
        delivery.enqueue(session, issue_id)
    delivery.send_issue(web.ctx, issue_id, transport=None)
    digest = [m for m in web.mails_to("linked@example.com") if b"/archive/" in m.data][-1].message
    text_link = link(digest, "preferences")
    html_links = re.findall(r'href="([^"]*/preferences/[^"]+)"', html_part(digest))
    assert html_links == [text_link]
    assert text_link.endswith(web.ctx.tokens.preferences(sid))
    page = web.client().get(path_of(text_link))
    assert page.status_code == 200
    assert f"/unsubscribe/{web.ctx.tokens.unsubscribe(sid)}" in page.get_data(as_text=True)
    # The archive copy carries no reader's token.
    archived = web.client().get(f"/archive/{issue_id}").get_data(as_text=True)
    assert "/preferences/" not in archived


# --------------------------------------------------------------------------- welcome


def _welcomes(web: Web, email: str) -> list[str]:
    return [
        str(m.message["Subject"])
        for m in web.mails_to(email)
        if str(m.message["Subject"]).startswith("Welcome")
    ]


def test_confirming_sends_one_welcome_with_what_to_expect(web: Web) -> None:
    with web.ctx.db.write() as session:  # a past issue whose top stories the welcome shows
        first = add_story(session, title="Yesterday's lead")
        add_story(session, title="Yesterday's second")
        issue = mail.build_issue(session, web.ctx)
        assert issue is not None
        issue_id = issue.id
    with web.ctx.db.write() as session:
        delivery.enqueue(session, issue_id)
    delivery.send_issue(web.ctx, issue_id)
    client = web.client()
    subscribe(client, "welcome@example.com", name="Wendy")
    [confirmation] = web.mails_to("welcome@example.com")
    assert "/preferences/" in text_part(confirmation.message)  # the confirmation links it too
    confirm = path_of(link(confirmation.message, "confirm"))
    assert client.post(confirm).status_code == 200
    assert client.post(confirm).status_code == 200  # a double click or a replay
    web.settle()
    assert _welcomes(web, "welcome@example.com") == ["Welcome to The Daily Digest"]
    welcome = next(m for m in web.mails_to("welcome@example.com") if m is not confirmation).message
    text = text_part(welcome)
    assert "Hi Wendy," in text
    assert "every day at 07:00 (UTC)" in text
    assert first.title in text and first.title in html_part(welcome)
    assert welcome["List-Unsubscribe"] is not None
    prefs = link(welcome, "preferences")
    row = web.subscriber("welcome@example.com")
    assert row is not None and prefs.endswith(web.ctx.tokens.preferences(row.id))
    assert web.client().get(path_of(prefs)).status_code == 200


def test_unsubscribed_reader_signs_up_again_through_double_opt_in(web: Web) -> None:
    sid, _ = _active(web, "again@example.com")
    client = web.client()
    first_consent = web.subscriber("again@example.com")
    assert first_consent is not None and first_consent.consent_at is not None
    client.post(f"/unsubscribe/{web.ctx.tokens.unsubscribe(sid)}")
    assert _prefs_row(web, "again@example.com")[0] == SubscriberStatus.UNSUBSCRIBED

    subscribe(client, "again@example.com", ip="203.0.113.99")
    mails = web.mails_to("again@example.com")
    confirmations = [m for m in mails if "/confirm/" in text_part(m.message)]
    assert len(confirmations) == 2  # a new double opt-in
    row = web.subscriber("again@example.com")
    assert row is not None and row.status == SubscriberStatus.UNSUBSCRIBED  # not yet back
    client.post(
        path_of(link(confirmations[-1].message, "confirm")),
        environ_base={"REMOTE_ADDR": "203.0.113.99"},
    )
    back = web.subscriber("again@example.com")
    assert back is not None and back.status == SubscriberStatus.ACTIVE
    assert back.consent_at is not None and back.consent_at > first_consent.consent_at
    assert back.consent_ip == "203.0.113.99"  # the new consent record
    web.settle()
    assert _welcomes(web, "again@example.com") == [
        "Welcome to The Daily Digest",
        "Welcome back to The Daily Digest",
    ]


@pytest.mark.parametrize("status", [SubscriberStatus.BOUNCED, SubscriberStatus.COMPLAINED])
def test_bounced_or_complained_address_is_not_reactivated_and_the_answer_is_the_same(
    web: Web, status: SubscriberStatus
) -> None:
    sid, _ = _active(web, "gone@example.com")
    with web.ctx.db.write() as session:
        row = session.get(Subscriber, sid)
        assert row is not None
        row.status = status  # what a hard bounce or a spam complaint leaves
        row.confirm_sent_at = None
    before = len(web.mails_to("gone@example.com"))
    bounced = subscribe(web.client(), "gone@example.com", ip="203.0.113.50")
    unknown = subscribe(web.client(), "new-one@example.com", ip="203.0.113.51")
    assert bounced.status_code == unknown.status_code == 200
    assert re.sub(r'nonce="[^"]+"', "", bounced.get_data(as_text=True)) == re.sub(
        r'nonce="[^"]+"', "", unknown.get_data(as_text=True)
    )
    assert len(web.mails_to("gone@example.com")) == before  # nothing sent
    with web.ctx.db.read() as session:
        row = session.get(Subscriber, sid)
        assert row is not None and row.status == status
        assert row.confirm_sent_at is None
