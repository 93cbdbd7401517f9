"""The web app through Flask's test client, against a real SQLite file and SMTP server.

Subscribe (CSRF, honeypot, validation, rate limits, no probing) and confirm
(scanner-safe GET, signed expiring token, replay, expiry with a new link).
Unsubscribe, archive and errors are in ``test_web_unsubscribe.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta

import pytest
import time_machine
from _web_support import (
    Web,
    csrf_from,
    link,
    make_web,
    path_of,
    subscribe,
    web,
    web_settings,
    without_nonces,
)
from sqlalchemy import func, select

from newsletter.context import Context
from newsletter.models import Subscriber, SubscriberStatus, utcnow
from newsletter.web.app import create_app, web_state

__all__ = ["make_web", "web"]  # fixtures


# --------------------------------------------------------------------------- subscribe page


def test_subscribe_form_has_csrf_honeypot_and_strict_headers(web: Web) -> None:
    client = web.client()
    for path in ("/", "/subscribe"):
        resp = client.get(path)
        assert resp.status_code == 200
        html = resp.get_data(as_text=True)
        assert 'method="post" action="/subscribe"' in html
        assert csrf_from(html)
        assert 'name="website"' in html  # the honeypot
        csp = resp.headers["Content-Security-Policy"]
        nonce = re.search(r"style-src 'nonce-([^']+)'", csp)
        assert nonce and f'<style nonce="{nonce.group(1)}">' in html
        assert "default-src 'none'" in csp and "script-src" not in csp
        assert "frame-ancestors 'none'" in csp and "form-action 'self'" in csp
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Cache-Control"] == "no-store"  # carries a CSRF token
    cookie = client.get_cookie("newsletter_session")
    assert cookie is not None and cookie.http_only and cookie.secure


def test_new_address_gets_pending_row_and_confirmation_email(web: Web) -> None:
    resp = subscribe(web.client(), " Reader@Example.COM ", name="Ada\r\nBcc: x@evil.test")
    assert resp.status_code == 200
    assert "Check your inbox" in resp.get_data(as_text=True)
    sub = web.subscriber("reader@example.com")
    assert sub is not None and sub.status == SubscriberStatus.PENDING
    assert "\n" not in sub.name and "\r" not in sub.name
    mails = web.mails_to("reader@example.com")
    assert len(mails) == 1
    msg = mails[0].message
    assert mails[0].envelope_from == "news@example.com"
    assert msg["From"].addresses[0].addr_spec == "news@example.com"
    assert "List-Unsubscribe" not in msg  # not subscribed yet: nothing to leave
    assert "Bcc" not in msg  # the CR/LF in the name started no header
    [to] = msg["To"].addresses
    # No name before confirmation: it is whatever a stranger typed (issue 16, finding 2).
    assert to.addr_spec == "reader@example.com" and to.display_name == ""
    assert sub.name == "Ada Bcc"
    url = link(msg, "confirm")
    assert web.ctx.tokens.read_confirm(url.rsplit("/", 1)[1]) == sub.id


def test_same_answer_for_new_pending_and_active(web: Web) -> None:
    client = web.client()
    new = subscribe(client, "new@example.com")
    pending = subscribe(client, "new@example.com", ip="203.0.113.8")
    with web.ctx.db.write() as session:
        session.add(Subscriber(email="active@example.com", status=SubscriberStatus.ACTIVE))
    active = subscribe(client, "active@example.com", ip="203.0.113.9")
    bodies = {without_nonces(r.get_data(as_text=True)) for r in (new, pending, active)}
    assert {r.status_code for r in (new, pending, active)} == {200}
    assert len(bodies) == 1, "the answer must not reveal whether the address is known"
    assert len(web.mails_to("new@example.com")) == 2  # pending: a fresh link each time
    # An active reader gets a note instead of a link (the same work, issue 16 finding 5).
    [note] = web.mails_to("active@example.com")
    assert note.message["Subject"] == "You are already subscribed to The Daily Digest"
    assert "/confirm/" not in note.data.decode()
    active_row = web.subscriber("active@example.com")
    assert active_row is not None and active_row.status == SubscriberStatus.ACTIVE


@pytest.mark.parametrize(
    "bad",
    ["", "not-an-email", "a@b", "x@example.com\r\nBcc: victim@example.com", "a" * 400 + "@x.com"],
)
def test_bad_email_is_refused_clearly_and_stores_nothing(web: Web, bad: str) -> None:
    resp = subscribe(web.client(), bad)
    assert resp.status_code == 400
    page = resp.get_data(as_text=True)
    assert 'class="error" role="alert"' in page
    assert "@-sign" not in page and "It should" not in page  # the reader's words, not the library's
    with web.ctx.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Subscriber)) == 0
    web.settle()
    assert web.smtp.messages == []


def test_honeypot_looks_successful_but_does_nothing(web: Web) -> None:
    resp = subscribe(web.client(), "bot@example.com", website="http://spam.test")
    assert resp.status_code == 200
    assert "Check your inbox" in resp.get_data(as_text=True)
    assert web.subscriber("bot@example.com") is None
    assert web.mails_to("bot@example.com") == []


def test_missing_or_wrong_csrf_token_is_refused(web: Web) -> None:
    client = web.client()
    client.get("/subscribe")
    missing = client.post("/subscribe", data={"email": "a@example.com"})
    wrong = client.post("/subscribe", data={"email": "a@example.com", "csrf_token": "x" * 43})
    no_cookie = web.client().post(
        "/subscribe", data={"email": "a@example.com", "csrf_token": csrf_from(missing.text)}
    )
    for resp in (missing, wrong, no_cookie):
        assert resp.status_code == 400
        assert "form had expired" in resp.get_data(as_text=True)
    assert web.subscriber("a@example.com") is None
    # The refusal page carries a fresh token, so a person can simply submit again.
    assert subscribe(client, "a@example.com").status_code == 200


def test_rate_limit_per_client_ip(make_web: Callable[..., Web]) -> None:
    web = make_web(NEWSLETTER_WEB_RATE_IP="3/1h")
    client = web.client()
    codes = [
        subscribe(client, f"r{i}@example.com", ip="198.51.100.1").status_code for i in range(4)
    ]
    assert codes == [200, 200, 200, 429]
    last = subscribe(client, "r9@example.com", ip="198.51.100.1")
    assert last.status_code == 429 and "Too many" in last.get_data(as_text=True)
    assert web.subscriber("r9@example.com") is None
    # Another client is not affected.
    assert subscribe(client, "r9@example.com", ip="198.51.100.2").status_code == 200


def test_rate_limit_per_target_address(make_web: Callable[..., Web]) -> None:
    web = make_web(NEWSLETTER_WEB_RATE_ADDRESS="2/1h")
    client = web.client()
    codes = [
        subscribe(client, "Victim@Example.com", ip=f"198.51.100.{i}").status_code for i in range(3)
    ]
    assert codes == [200, 200, 429]
    assert len(web.mails_to("victim@example.com")) == 2  # no mail bombing through us
    assert subscribe(client, "other@example.com", ip="198.51.100.9").status_code == 200


def test_smtp_failure_is_logged_not_shown(
    env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    from conftest import free_port

    settings = web_settings(env, NEWSLETTER_SMTP_URL=f"smtp://127.0.0.1:{free_port()}")
    ctx = Context.open(settings)
    try:
        app = create_app(ctx)
        web_state(app).mailer.retry_delays = (0.01,)
        client = app.test_client()
        resp = subscribe(client, "down@example.com")
        web_state(app).mailer.join()
        assert resp.status_code == 200 and "Check your inbox" in resp.get_data(as_text=True)
        with ctx.db.read() as session:
            status = session.scalar(
                select(Subscriber.status).where(Subscriber.email == "down@example.com")
            )
        assert status == SubscriberStatus.PENDING
        warnings = [r.getMessage() for r in caplog.records if r.name == "newsletter.web.mail"]
        assert any("not accepted" in w for w in warnings), warnings
        web_state(app).mailer.close()
    finally:
        ctx.close()


# --------------------------------------------------------------------------- confirm


def _pending(web: Web, email: str = "p@example.com") -> tuple[Subscriber, str]:
    subscribe(web.client(), email)
    sub = web.subscriber(email)
    assert sub is not None
    [mail] = web.mails_to(email)
    return sub, path_of(link(mail.message, "confirm"))


def test_confirm_get_is_one_button_that_nothing_presses_by_itself(web: Web) -> None:
    sub, path = _pending(web)
    resp = web.client().get(path)
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert f'method="post" action="{path}"' in html
    assert html.count("<button") == 1
    # Link scanners open links in sandboxed browsers: nothing may submit the form.
    assert "<script" not in html and ".submit()" not in html
    assert "script-src" not in resp.headers["Content-Security-Policy"]
    assert 'http-equiv="refresh"' not in html.lower()
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["Cache-Control"] == "no-store"
    again = web.subscriber(sub.email)
    assert again is not None and again.status == SubscriberStatus.PENDING  # scanner-safe


def test_confirm_post_records_consent_and_replay_is_harmless(web: Web) -> None:
    sub, path = _pending(web)
    client = web.client()
    before = utcnow()
    resp = client.post(path, environ_base={"REMOTE_ADDR": "192.0.2.44"})
    assert resp.status_code == 200 and "subscribed" in resp.get_data(as_text=True)
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    row = web.subscriber(sub.email)
    assert row is not None and row.status == SubscriberStatus.ACTIVE
    assert row.consent_ip == "192.0.2.44"
    assert row.consent_at is not None and row.consent_at >= before - timedelta(seconds=1)
    replay = client.post(path, environ_base={"REMOTE_ADDR": "192.0.2.99"})
    assert replay.status_code == 200 and "subscribed" in replay.get_data(as_text=True)
    row2 = web.subscriber(sub.email)
    assert row2 is not None and row2.status == SubscriberStatus.ACTIVE
    assert client.get(path).status_code == 200  # an old link still shows "confirmed"


def test_confirm_tampered_unknown_or_wrong_purpose_token(web: Web) -> None:
    sub, path = _pending(web)
    client = web.client()
    # change a signature character that counts (the last one's low bits are padding)
    tampered = path[:-5] + ("A" if path[-5] != "A" else "B") + path[-4:]
    for method in (client.get, client.post):
        for bad in (tampered, "/confirm/" + web.ctx.tokens.unsubscribe(sub.id), "/confirm/x"):
            resp = method(bad)
            assert resp.status_code == 400
            body = resp.get_data(as_text=True)
            assert "Traceback" not in body and "Signature" not in body
        unknown = method("/confirm/" + web.ctx.tokens.confirm(424242))
        assert unknown.status_code == 404
    assert client.get("/confirm/" + "a" * 5000).status_code == 400
    row = web.subscriber(sub.email)
    assert row is not None and row.status == SubscriberStatus.PENDING


def test_expired_link_offers_a_new_one_that_works(web: Web) -> None:
    with time_machine.travel(utcnow() - timedelta(days=8), tick=True):
        sub, old = _pending(web, "late@example.com")
    client = web.client()
    page = client.get(old)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "expired" in html and f'action="{old}/resend"' in html
    assert client.post(old).status_code == 200  # the POST also explains, changes nothing
    row = web.subscriber(sub.email)
    assert row is not None and row.status == SubscriberStatus.PENDING
    assert client.post(old + "/resend").status_code == 400  # CSRF required
    resent = client.post(old + "/resend", data={"csrf_token": csrf_from(html)})
    assert resent.status_code == 200 and "Check your inbox" in resent.get_data(as_text=True)
    mails = web.mails_to("late@example.com")
    assert len(mails) == 2
    fresh = path_of(link(mails[-1].message, "confirm"))
    assert fresh != old
    assert client.post(fresh).status_code == 200
    row = web.subscriber(sub.email)
    assert row is not None and row.status == SubscriberStatus.ACTIVE
    # An expired link of someone already confirmed just says so.
    assert "subscribed" in client.get(old).get_data(as_text=True)


def test_expired_link_of_a_purged_pending_subscriber_points_to_the_form(web: Web) -> None:
    with time_machine.travel(utcnow() - timedelta(days=8), tick=True):
        sub, old = _pending(web, "gone@example.com")
    with web.ctx.db.write() as session:
        session.delete(session.get(Subscriber, sub.id))
    client = web.client()
    page = client.get(old)
    assert page.status_code == 200
    assert 'href="/subscribe"' in page.get_data(as_text=True)
    assert "/resend" not in page.get_data(as_text=True)


def test_smtp_refusal_is_logged_not_shown(
    env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    from conftest import RecordingHandler, start_smtp

    class Refusing(RecordingHandler):
        def rcpt_reply(self, address: str) -> str:
            return "550 5.1.1 no such user"

    server = start_smtp(Refusing())
    ctx = Context.open(web_settings(env, NEWSLETTER_SMTP_URL=server.url))
    try:
        app = create_app(ctx)
        resp = subscribe(app.test_client(), "nobody@example.com")
        web_state(app).mailer.join()
        assert resp.status_code == 200 and "Check your inbox" in resp.get_data(as_text=True)
        assert "550" not in resp.get_data(as_text=True)
        assert server.messages == []
        assert any("550" in r.getMessage() for r in caplog.records)
        web_state(app).mailer.close()
    finally:
        ctx.close()
        server.controller.stop()


def test_bad_input_is_echoed_escaped_with_the_reason(web: Web) -> None:
    hostile = '"><script>alert(1)</script>'
    resp = subscribe(web.client(), hostile, name="<b>Bo</b>")
    assert resp.status_code == 400
    html = resp.get_data(as_text=True)
    assert "<script>alert" not in html and "<b>Bo</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;b&gt;Bo&lt;/b&gt;" in html
    assert (
        "That address is missing an @."
        in subscribe(web.client(), "not-an-email", ip="192.0.2.1").text
    )
