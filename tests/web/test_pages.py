"""The public pages as a reader meets them: the archived issue as a web page, the
unsubscribe result, bad and expired links, and form errors in plain words.

``PAGES`` (every public page, reached the way a reader reaches it) is shared with the
chromium/axe-core landmark test and the screenshot script.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
import time_machine
from _web_support import Web, make_web, subscribe, web
from conftest import OWN_FEEDS
from flask.testing import FlaskClient

from newsletter import delivery, stories
from newsletter.mail import digest
from newsletter.models import IssueStatus, Subscriber, SubscriberStatus, utcnow
from newsletter.subscribers.addresses import reader_reason

__all__ = ["make_web", "web"]  # fixtures


def send_issue(web: Web) -> int:
    """A real digest from our own fixture feed, sent to one reader."""
    with web.ctx.db.write() as session:
        stories.import_sources(session, [str(OWN_FEEDS / "planet.xml")], feature=True)
        session.add(Subscriber(email="ana@example.com", name="Ana", status=SubscriberStatus.ACTIVE))
    with web.ctx.db.write() as session:
        issue = digest.build_issue(session, web.ctx)
        assert issue is not None
        issue_id = issue.id
        delivery.enqueue(session, issue_id)
    assert delivery.send_issue(web.ctx, issue_id).status == IssueStatus.SENT
    return issue_id


def reader_tokens(web: Web) -> tuple[str, str, str]:
    """(unsubscribe token, fresh confirm token, expired confirm token) for real rows."""
    with web.ctx.db.write() as session:
        pending = Subscriber(email="pat@example.com", name="", status=SubscriberStatus.PENDING)
        session.add(pending)
        session.flush()
        active = session.query(Subscriber).filter_by(email="ana@example.com").one()
        unsubscribe = web.ctx.tokens.unsubscribe(active.id)
        confirm = web.ctx.tokens.confirm(pending.id)
        pending_id = pending.id
    # An expired confirm link: the same signer, dated ten days ago.
    expired = _expired_confirm(web, pending_id)
    return unsubscribe, confirm, expired


def _expired_confirm(web: Web, subscriber_id: int) -> str:
    with time_machine.travel(utcnow() - timedelta(days=10), tick=True):
        return web.ctx.tokens.confirm(subscriber_id)


def pages(web: Web) -> dict[str, tuple[str, str, dict[str, str] | None]]:
    """name -> (method, path, form): every public page a reader can land on."""
    issue_id = send_issue(web)
    unsubscribe, confirm, expired = reader_tokens(web)
    return {
        "subscribe": ("GET", "/subscribe", None),
        "subscribe-error": ("POST", "/subscribe", {"email": "ana.example.com"}),
        "check-inbox": ("POST", "/subscribe", {"email": "new@example.org"}),
        "confirm": ("GET", f"/confirm/{confirm}", None),
        "confirmed": ("POST", f"/confirm/{confirm}", {}),
        "expired": ("GET", f"/confirm/{expired}", None),
        "unsubscribe": ("GET", f"/unsubscribe/{unsubscribe}", None),
        "unsubscribed": ("POST", f"/unsubscribe/{unsubscribe}", {}),
        "already-unsubscribed": ("GET", f"/unsubscribe/{unsubscribe}", None),
        "bad-link": ("GET", "/unsubscribe/not-a-real-token", None),
        "not-found": ("GET", "/no/such/page", None),
        "archive": ("GET", "/archive", None),
        "issue": ("GET", f"/archive/{issue_id}", None),
    }


def fetch(
    client: FlaskClient, method: str, path: str, form: dict[str, str] | None
) -> tuple[int, str]:
    if method == "GET":
        resp = client.get(path)
    elif path == "/subscribe":
        resp = subscribe(client, form["email"] if form else "", ip="192.0.2.7")
    else:
        resp = client.post(path, data=form or {})
    return resp.status_code, resp.get_data(as_text=True)


def test_archived_issue_is_a_web_page_with_a_subscribe_call(web: Web) -> None:
    issue_id = send_issue(web)
    status, html = fetch(web.client(), "GET", f"/archive/{issue_id}", None)
    assert status == 200
    assert '<header class="masthead"><a href="/">The Daily Digest</a></header>' in html
    assert '<a class="button" href="/subscribe">Subscribe</a>' in html
    assert "Harbour tunnel opens a year early" in html
    for email_only in ("You are receiving", "View in browser", "Unsubscribe", "Hi Ana"):
        assert email_only not in html, email_only
    assert html.count("<h1") == 1 and html.count("<main") == 1 and html.count("<footer") == 1


def test_unsubscribed_pages_offer_to_subscribe_again_not_the_button(web: Web) -> None:
    send_issue(web)
    unsubscribe, _, _ = reader_tokens(web)
    client = web.client()
    first = client.get(f"/unsubscribe/{unsubscribe}").get_data(as_text=True)
    assert "<button" in first  # before: the one button
    done = client.post(f"/unsubscribe/{unsubscribe}").get_data(as_text=True)
    again = client.get(f"/unsubscribe/{unsubscribe}").get_data(as_text=True)
    for page in (done, again):
        assert "You're unsubscribed" in page
        assert 'Changed your mind? <a href="/subscribe">Subscribe again</a>' in page
        assert "<button" not in page and "<form" not in page


def test_bad_and_expired_links_say_what_happened_and_what_to_do(web: Web) -> None:
    send_issue(web)
    _, _, expired = reader_tokens(web)
    client = web.client()
    bad = client.get("/unsubscribe/not-a-real-token")
    assert bad.status_code == 400
    text = bad.get_data(as_text=True)
    assert "This link does not work" in text and "cut short" in text  # what happened
    assert "Open the link again straight from the email" in text  # what to do
    old = client.get(f"/confirm/{expired}").get_data(as_text=True)
    assert "has expired" in old and "work for 7 days" in old
    assert "Send me a new link" in old  # a pending reader can get a new one at once


@pytest.mark.parametrize(
    ("typed", "said"),
    [
        ("", "Please enter your email address."),
        ("ana.example.com", "That address is missing an @."),
        ("ana@@example.com", "That address has more than one @. Please enter just one address."),
        ("ana @example.com", "Email addresses can't contain spaces. Please check it for typos."),
        ("@example.com", "Something is missing before the @."),
        ("ana@", "Something is missing after the @ (such as example.com)."),
        ("ana@example", "The part after the @ needs a dot, as in example.com."),
    ],
)
def test_form_errors_are_written_for_readers(web: Web, typed: str, said: str) -> None:
    assert reader_reason(typed) == said
    resp = subscribe(web.client(), typed, ip="192.0.2.9")
    assert resp.status_code == 400
    page = resp.get_data(as_text=True)
    assert said.replace("'", "&#39;") in page
    assert "@-sign" not in page and "It should" not in page


def test_pages_use_the_configured_language(make_web: Callable[..., Web]) -> None:
    web = make_web(NEWSLETTER_LANGUAGE="es")
    assert '<html lang="es">' in web.client().get("/subscribe").get_data(as_text=True)


def test_every_page_has_main_header_and_footer_landmarks(web: Web) -> None:
    client = web.client()
    for name, (method, path, form) in pages(web).items():
        _, html = fetch(client, method, path, form)
        for landmark in ("<header", "<main", "<footer"):
            assert html.count(landmark) == 1, (name, landmark)
