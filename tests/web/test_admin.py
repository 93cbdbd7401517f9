"""The admin blueprint: nothing answers without a session, every POST needs CSRF,
the login throttle, argon2 hashes, hostile titles escaped, send-test to the editor only.

Routes are enumerated from ``app.url_map`` so that a route added later is covered
by the anonymous and CSRF checks without anyone remembering to list it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from _admin_support import EDITOR, PASSWORD, csrf_of, logged_in, login, make_editor
from _web_support import Web, make_web, web
from flask import Flask
from sqlalchemy import func, select
from werkzeug.routing import Rule

from newsletter.models import Delivery, Issue, LoginEvent, Story, User, utcnow
from newsletter.stories import add_story
from newsletter.web.admin.accounts import verify_password
from newsletter.web.admin.auth import API_ENDPOINTS, OPEN_ENDPOINTS

__all__ = ["make_web", "web"]  # fixtures

HOSTILE = '<script>alert("t")</script><img src=x onerror=alert(1)> & "Q" Story'


def admin_rules(app: Flask) -> list[Rule]:
    rules = [r for r in app.url_map.iter_rules() if r.endpoint.startswith("admin.")]
    assert len(rules) > 25, "the admin blueprint is not registered"
    return rules


def url_of(rule: Rule, ids: dict[str, Any] | None = None) -> str:
    """The rule's path with a sample value for each argument."""
    path = rule.rule
    for arg in rule.arguments:
        value = (ids or {}).get(arg, "admin.js" if arg == "name" else 1)
        path = re.sub(r"<(?:[a-z]+:)?" + arg + ">", str(value), path)
    return path


def methods(rule: Rule) -> set[str]:
    return set(rule.methods or ()) - {"HEAD", "OPTIONS"}


# --------------------------------------------------------------------------- the gate


def test_every_admin_route_refuses_an_anonymous_request(web: Web) -> None:
    make_editor(web)
    client = web.client()
    checked = 0
    for rule in admin_rules(web.app):
        if rule.endpoint in OPEN_ENDPOINTS:
            continue
        url = url_of(rule)
        for method in methods(rule):
            response = client.open(url, method=method)
            body = response.get_data(as_text=True)
            if method == "GET" and rule.endpoint not in API_ENDPOINTS:
                assert response.status_code == 303, (method, url, response.status_code)
                assert response.headers["Location"].startswith("/admin/login"), url
            else:
                assert response.status_code == 401, (method, url, response.status_code)
            assert "Dashboard" not in body and EDITOR not in body
            checked += 1
    assert checked > 25


def test_every_admin_post_refuses_a_missing_or_wrong_csrf_token(web: Web) -> None:
    make_editor(web)
    client = logged_in(web)
    posts = [r for r in admin_rules(web.app) if "POST" in methods(r)]
    assert len(posts) > 12
    before = _table_counts(web)
    for rule in posts:
        url = url_of(rule)
        for data in ({}, {"csrf_token": "forged-token-forged-token-forged-token"}):
            response = client.post(url, data={**data, "confirmed": "yes"})
            assert response.status_code == 403, (url, data, response.status_code)
    assert _table_counts(web) == before  # nothing changed
    # ... and the session itself is still good
    assert client.get("/admin/").status_code == 200


def _table_counts(web: Web) -> tuple[int, int, int]:
    with web.ctx.db.read() as session:
        return (
            int(session.scalar(select(func.count()).select_from(Issue)) or 0),
            int(session.scalar(select(func.count()).select_from(Story)) or 0),
            int(session.scalar(select(func.count()).select_from(User)) or 0),
        )


def test_login_form_needs_its_csrf_token(web: Web) -> None:
    make_editor(web)
    client = web.client()
    response = client.post("/admin/login", data={"email": EDITOR, "password": PASSWORD})
    assert response.status_code == 403
    assert client.get("/admin/").status_code == 303


def test_login_then_logout(web: Web, caplog: pytest.LogCaptureFixture) -> None:
    make_editor(web)
    client = web.client()
    caplog.set_level("INFO", logger="newsletter.admin")
    response = login(client)
    assert response.status_code == 303 and response.headers["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200
    response = client.post("/admin/logout", data={"csrf_token": csrf_of(client)})
    assert response.status_code == 303
    assert client.get("/admin/").status_code == 303
    with web.ctx.db.read() as session:
        outcomes = list(session.scalars(select(LoginEvent.outcome).order_by(LoginEvent.id)))
    assert outcomes == ["ok", "logout"]
    assert f"admin login: {EDITOR}" in caplog.text and f"admin logout: {EDITOR}" in caplog.text


def test_next_parameter_never_leaves_the_admin(web: Web) -> None:
    make_editor(web)
    client = web.client()
    response = client.get("/admin/issues?x=1")
    assert response.headers["Location"] == "/admin/login?next=/admin/issues?x%3D1"
    token = csrf_of_login(client)
    for evil in ("https://evil.example/", "//evil.example/admin/", "/admin/\\evil", "/public"):
        client.cookie_jar.clear() if hasattr(client, "cookie_jar") else None
        response = client.post(
            "/admin/login",
            data={"csrf_token": token, "email": EDITOR, "password": PASSWORD, "next": evil},
        )
        assert response.status_code in (303, 403)
        if response.status_code == 303:
            assert response.headers["Location"] in ("/admin/", "/admin/login"), evil
        client = web.client()
        token = csrf_of_login(client)
    response = client.post(
        "/admin/login",
        data={"csrf_token": token, "email": EDITOR, "password": PASSWORD, "next": "/admin/issues"},
    )
    assert response.headers["Location"] == "/admin/issues"


def csrf_of_login(client: Any) -> str:
    from _web_support import csrf_from

    return csrf_from(client.get("/admin/login").get_data(as_text=True))


# --------------------------------------------------------------------------- session


def _cookie_header(response: Any) -> str:
    cookies = [v for k, v in response.headers.items() if k == "Set-Cookie"]
    [cookie] = [c for c in cookies if c.startswith("newsletter_session=")]
    return str(cookie)


def test_session_cookie_flags_https(web: Web) -> None:
    make_editor(web)
    cookie = _cookie_header(login(web.client()))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" in cookie
    assert "Expires=" in cookie  # permanent: the browser drops it after 12 hours


def test_session_cookie_not_secure_over_plain_http(make_web: Any) -> None:
    web = make_web(NEWSLETTER_BASE_URL="http://localhost:8000")
    make_editor(web)
    cookie = _cookie_header(login(web.client()))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie


def test_session_expires_after_12_hours_idle(web: Web) -> None:
    make_editor(web)
    with time_machine.travel(utcnow(), tick=True) as clock:
        client = logged_in(web)
        clock.shift(timedelta(hours=11))
        assert client.get("/admin/").status_code == 200  # activity refreshes the clock
        clock.shift(timedelta(hours=11, minutes=50))
        assert client.get("/admin/").status_code == 200
        cookie = client.get_cookie("newsletter_session")
        assert cookie is not None
        clock.shift(timedelta(hours=12, minutes=2))
        # The browser would have dropped the cookie (max-age 12 h); a replayed one is refused.
        client.set_cookie("newsletter_session", cookie.value, domain="news.example.com")
        response = client.get("/admin/")
        assert response.status_code == 303
        assert response.headers["Location"].startswith("/admin/login")


def test_a_new_password_ends_other_sessions(web: Web) -> None:
    from newsletter.web.admin.accounts import set_password

    make_editor(web)
    client = logged_in(web)
    with web.ctx.db.write() as session:
        set_password(session, EDITOR, "another long passphrase")
    assert client.get("/admin/").status_code == 303


# --------------------------------------------------------------------------- throttle


def test_account_throttle_refuses_even_the_right_password(web: Web) -> None:
    make_editor(web)
    with time_machine.travel(utcnow(), tick=True) as clock:
        client = web.client()
        for i in range(5):
            response = login(client, password=f"wrong password {i}", ip=f"198.51.100.{i}")
            assert response.status_code == 401
        response = login(client, ip="198.51.100.77")  # the right one, another IP
        assert response.status_code == 429
        assert 60 < int(response.headers["Retry-After"]) <= 15 * 60 + 1
        assert "Too many failed logins" in response.get_data(as_text=True)
        assert client.get("/admin/").status_code == 303
        clock.shift(timedelta(minutes=14))
        assert login(client).status_code == 429
        clock.shift(timedelta(minutes=2))
        assert login(client).status_code == 303
        assert client.get("/admin/").status_code == 200
    with web.ctx.db.read() as session:
        outcomes = list(session.scalars(select(LoginEvent.outcome).order_by(LoginEvent.id)))
    assert outcomes == ["failed"] * 5 + ["throttled"] * 2 + ["ok"]


def test_ip_throttle_after_20_failures_across_accounts(web: Web) -> None:
    from newsletter.web.admin.accounts import record_event

    make_editor(web)
    client = web.client()
    with web.ctx.db.write() as session:  # 18 earlier failures from this IP, 4 per account
        for i in range(18):
            record_event(session, f"guess{i // 4}@news.example.com", "198.51.100.9", "failed",
                         utcnow() - timedelta(minutes=10))  # fmt: skip
    for i in range(2):  # argon2 is slow on purpose: only the last two go through the form
        response = login(client, email=f"other{i}@news.example.com", password="nope nope nope")
        assert response.status_code == 401, i
    assert login(client).status_code == 429  # the right account, from that IP
    assert login(client, ip="192.0.2.50").status_code == 303  # another IP is fine


def test_ipv6_clients_are_throttled_by_their_64(web: Web) -> None:
    from newsletter.web.admin.accounts import record_event

    make_editor(web)
    with web.ctx.db.write() as session:
        for i in range(20):
            record_event(session, f"g{i}@news.example.com", "2001:db8:1:2::/64", "failed",
                         utcnow() - timedelta(minutes=1))  # fmt: skip
    client = web.client()
    assert login(client, ip="2001:db8:1:2::beef").status_code == 429
    assert login(client, ip="2001:db8:1:3::beef").status_code == 303


def test_a_success_clears_the_account_count(web: Web) -> None:
    make_editor(web)
    client = web.client()
    for _ in range(4):
        assert login(client, password="wrong wrong wrong").status_code == 401
    assert login(client).status_code == 303
    client = web.client()
    for _ in range(4):
        assert login(client, password="wrong wrong wrong", ip="192.0.2.9").status_code == 401
    assert login(client, ip="192.0.2.9").status_code == 303


# --------------------------------------------------------------------------- argon2


def test_passwords_are_stored_as_argon2id_hashes(web: Web) -> None:
    make_editor(web)
    with web.ctx.db.read() as session:
        user = session.scalars(select(User)).one()
        assert user.password_hash.startswith("$argon2id$")
        assert PASSWORD not in user.password_hash
        assert verify_password(user.password_hash, PASSWORD)
        assert not verify_password(user.password_hash, PASSWORD + "x")
        assert not verify_password("not a hash", PASSWORD)
    assert login(web.client(), password=PASSWORD.upper()).status_code == 401


# --------------------------------------------------------------------------- escaping


@pytest.fixture
def hostile(web: Web) -> Iterator[dict[str, int]]:
    """A featured hostile story, sent in an issue to one reader: ids for every route."""
    from _delivery_support import add_subscribers

    from newsletter import delivery
    from newsletter.mail import build_issue

    make_editor(web)
    [reader] = add_subscribers(web.ctx, 1)
    with web.ctx.db.write() as session:
        story, _ = add_story(session, HOSTILE, "https://news.example.com/a?x=1&y=2", HOSTILE, True)
        add_story(session, "Second " + HOSTILE, "https://news.example.com/b", "", True)
        issue = build_issue(session, web.ctx, story_ids=[story.id])
        assert issue is not None
        delivery.enqueue(session, issue.id)
        ids = {"story_id": story.id, "issue_id": issue.id, "reader_id": reader}
    yield ids


def test_a_hostile_story_title_is_escaped_on_every_page(web: Web, hostile: dict[str, int]) -> None:
    client = logged_in(web)
    pages = 0
    for rule in admin_rules(web.app):
        if "GET" not in methods(rule) or rule.endpoint in OPEN_ENDPOINTS | {"admin.asset"}:
            continue
        response = client.get(url_of(rule, hostile), follow_redirects=True)
        assert response.status_code == 200, (rule.rule, response.status_code)
        body = response.get_data(as_text=True)
        assert "<script>alert" not in body, rule.rule
        assert "<img src=x" not in body, rule.rule
        pages += 1
    assert pages > 12
    stories = client.get("/admin/stories").get_data(as_text=True)
    assert "&lt;script&gt;alert(" in stories


# --------------------------------------------------------------------------- send-test


def test_send_test_reaches_only_the_logged_in_editor(web: Web) -> None:
    from _delivery_support import add_subscribers

    make_editor(web)
    make_editor(web, "second.editor@news.example.com", "another long passphrase")
    add_subscribers(web.ctx, 5)
    with web.ctx.db.write() as session:
        add_story(session, "Lead story", "https://news.example.com/lead", "Summary", True)
    client = web.client()
    assert (
        login(client, "second.editor@news.example.com", "another long passphrase").status_code
        == 303
    )
    response = client.post("/admin/send-test", data={"csrf_token": csrf_of(client)})
    assert response.status_code == 303
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "A test copy went to second.editor@news.example.com" in page
    [message] = web.smtp.messages
    assert message.rcpt_tos == ["second.editor@news.example.com"]
    assert message.message["To"] == "second.editor@news.example.com"
    assert message.message["Subject"].startswith("[TEST] ")
    with web.ctx.db.read() as session:  # nothing recorded: no issue, no ledger rows
        assert session.scalar(select(func.count()).select_from(Issue)) == 0
        assert session.scalar(select(func.count()).select_from(Delivery)) == 0
