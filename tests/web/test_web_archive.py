"""A real digest through the whole pipeline, then the web side of it.

RFC 8058: the unsubscribe URL is taken from the ``List-Unsubscribe`` header of the
message the SMTP server received and POSTed to exactly as a mailbox provider does.
Archive: sent issues are listed and shown from their frozen HTML with no reader's
data; unsent or unknown issues are not.
"""

from __future__ import annotations

import re

import pytest
from _web_support import BASE, Web, make_web, path_of, text_part, web
from conftest import OWN_FEEDS, Received
from sqlalchemy import update

from newsletter.delivery import send as delivery
from newsletter.mail import digest
from newsletter.models import Issue, IssueStatus, Subscriber, SubscriberStatus
from newsletter.stories import store as stories

__all__ = ["make_web", "web"]  # fixtures

READERS = {"ana@example.com": "Ana Secretname", "bo@example.com": ""}


def _send_digest(web: Web) -> tuple[int, dict[str, Received]]:
    """Import a fixture feed as featured, subscribe readers, build and send today's digest."""
    with web.ctx.db.write() as session:
        stories.import_sources(session, [str(OWN_FEEDS / "planet.xml")], feature=True)
        for email, name in READERS.items():
            session.add(Subscriber(email=email, name=name, status=SubscriberStatus.ACTIVE))
    with web.ctx.db.write() as session:
        issue = digest.build_issue(session, web.ctx)
        assert issue is not None
        issue_id = issue.id
        delivery.enqueue(session, issue_id)
    summary = delivery.send_issue(web.ctx, issue_id)
    assert summary.status == IssueStatus.SENT
    received = {m.rcpt_tos[0]: m for m in web.smtp.messages}
    assert set(received) == set(READERS)
    return issue_id, received


def test_rfc8058_one_click_from_a_received_message(web: Web) -> None:
    _, received = _send_digest(web)
    msg = received["ana@example.com"].message
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    urls = re.findall(r"<([^>]+)>", str(msg["List-Unsubscribe"]))
    https = [u for u in urls if u.startswith("https://")]
    assert len(https) == 1, msg["List-Unsubscribe"]
    # What Gmail/Yahoo do: a POST with exactly this body, no cookies, no Referer.
    provider = web.app.test_client()
    resp = provider.post(
        path_of(https[0]),
        data=b"List-Unsubscribe=One-Click",
        headers={
            "Host": "news.example.com",
            "Content-Type": "application/x-www-form-urlencoded",
            "User-Agent": "Mozilla/5.0 (compatible; GoogleOneClickUnsubscribe)",
        },
        base_url=BASE,
    )
    assert resp.status_code == 200
    assert "Location" not in resp.headers
    ana = web.subscriber("ana@example.com")
    assert ana is not None and ana.status == SubscriberStatus.UNSUBSCRIBED
    bo = web.subscriber("bo@example.com")
    assert bo is not None and bo.status == SubscriberStatus.ACTIVE
    # Retried by the provider: still 200.
    again = provider.post(path_of(https[0]), data={"List-Unsubscribe": "One-Click"})
    assert again.status_code == 200
    # The visible link in the body is the same target, behind a one-button page.
    body_link = re.search(re.escape(BASE) + r"/unsubscribe/[A-Za-z0-9_.\-]+", text_part(msg))
    assert body_link and body_link.group(0) == https[0]


def test_archive_lists_sent_issues_and_shows_them_without_personal_data(web: Web) -> None:
    issue_id, _ = _send_digest(web)
    client = web.client()
    listing = client.get("/archive")
    assert listing.status_code == 200
    with web.ctx.db.read() as session:
        issue = session.get(Issue, issue_id)
        assert issue is not None
        subject = issue.subject
    html_listing = listing.get_data(as_text=True)
    assert f'href="/archive/{issue_id}"' in html_listing
    from html import escape

    assert escape(subject) in html_listing

    page = client.get(f"/archive/{issue_id}")
    assert page.status_code == 200
    shown = page.get_data(as_text=True)
    with web.ctx.db.read() as session:
        issue = session.get(Issue, issue_id)
        assert issue is not None
        titles = [link.story.title for link in issue.stories]
    assert titles
    for title in titles:
        assert escape(title, quote=False) in shown or escape(title) in shown
    assert "__NL_" not in shown  # every per-reader placeholder replaced
    assert "Secretname" not in shown and "ana@example.com" not in shown
    assert "/unsubscribe/" not in shown  # no reader's token
    csp = page.headers["Content-Security-Policy"]
    assert "script-src" not in csp and "default-src 'none'" in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"


def test_archive_hides_unsent_and_unknown_issues(web: Web) -> None:
    issue_id, _ = _send_digest(web)
    with web.ctx.db.write() as session:
        session.execute(
            update(Issue).where(Issue.id == issue_id).values(status=IssueStatus.CANCELLED)
        )
    client = web.client()
    assert client.get(f"/archive/{issue_id}").status_code == 404
    assert f"/archive/{issue_id}" not in client.get("/archive").get_data(as_text=True)
    assert client.get("/archive/999999").status_code == 404
    assert client.get("/archive/abc").status_code == 404
    assert client.get("/archive/-1").status_code == 404


def test_empty_archive(web: Web) -> None:
    resp = web.client().get("/archive")
    assert resp.status_code == 200 and "No issues have been sent yet" in resp.text


@pytest.mark.parametrize("path", ["/archive/1/../../etc/passwd", "/archive/%00"])
def test_archive_odd_paths(web: Web, path: str) -> None:
    assert web.client().get(path).status_code == 404
