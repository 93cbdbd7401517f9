"""Unsubscribe (scanner-safe page, form POST, RFC 8058 one-click), health and errors."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from _web_support import Web, make_web, web, web_settings
from click.testing import CliRunner
from sqlalchemy import text

from newsletter.cli import main
from newsletter.context import Context
from newsletter.models import Subscriber, SubscriberStatus
from newsletter.web.app import create_app, web_state

__all__ = ["make_web", "web"]  # fixtures


def _active(web: Web, email: str = "reader@example.com") -> tuple[int, str]:
    with web.ctx.db.write() as session:
        sub = Subscriber(email=email, name="Reader", status=SubscriberStatus.ACTIVE)
        session.add(sub)
        session.flush()
        sid = sub.id
    return sid, f"/unsubscribe/{web.ctx.tokens.unsubscribe(sid)}"


def _status(web: Web, email: str = "reader@example.com") -> SubscriberStatus:
    row = web.subscriber(email)
    assert row is not None
    return row.status


def test_unsubscribe_get_shows_one_button_and_changes_nothing(web: Web) -> None:
    _, path = _active(web)
    resp = web.client().get(path)
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert html.count("<button") == 1 and f'method="post" action="{path}"' in html
    assert "<script" not in html  # no auto-submit: a scanner must not unsubscribe anyone
    assert "script-src" not in resp.headers["Content-Security-Policy"]
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["Cache-Control"] == "no-store"
    assert web.client().head(path).status_code == 200
    assert _status(web) == SubscriberStatus.ACTIVE


def test_unsubscribe_button_post_and_replay(web: Web) -> None:
    _, path = _active(web)
    client = web.client()
    client.get(path)
    first = client.post(path)
    assert first.status_code == 200 and "unsubscribed" in first.get_data(as_text=True)
    assert _status(web) == SubscriberStatus.UNSUBSCRIBED
    when = web.subscriber("reader@example.com").unsubscribed_at  # type: ignore[union-attr]
    again = client.post(path)
    assert again.status_code == 200
    assert web.subscriber("reader@example.com").unsubscribed_at == when  # type: ignore[union-attr]
    page = client.get(path)
    assert page.status_code == 200 and "already unsubscribed" in page.get_data(as_text=True)


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart", "empty"])
def test_one_click_post_without_cookie_or_csrf(web: Web, encoding: str) -> None:
    _, path = _active(web)
    client = web.client()  # fresh: no cookie, no CSRF token
    if encoding == "urlencoded":
        resp = client.post(
            path,
            data=b"List-Unsubscribe=One-Click",
            content_type="application/x-www-form-urlencoded",
        )
    elif encoding == "multipart":
        resp = client.post(
            path, data={"List-Unsubscribe": "One-Click"}, content_type="multipart/form-data"
        )
    else:
        resp = client.post(path)
    assert resp.status_code == 200
    assert "Location" not in resp.headers
    assert _status(web) == SubscriberStatus.UNSUBSCRIBED
    assert client.get_cookie("newsletter_session") is None  # nothing needed, nothing set
    for _ in range(3):  # providers retry: idempotent, always 200
        assert client.post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 200


def test_pending_subscriber_can_unsubscribe_too(web: Web) -> None:
    with web.ctx.db.write() as session:
        sub = Subscriber(email="p@example.com", status=SubscriberStatus.PENDING)
        session.add(sub)
        session.flush()
        sid = sub.id
    resp = web.client().post(f"/unsubscribe/{web.ctx.tokens.unsubscribe(sid)}")
    assert resp.status_code == 200
    assert _status(web, "p@example.com") == SubscriberStatus.UNSUBSCRIBED


def test_unsubscribe_tampered_unknown_or_wrong_purpose_token(web: Web) -> None:
    sid, path = _active(web)
    client = web.client()
    # change a signature character that counts (the last one's low bits are padding)
    tampered = path[:-5] + ("x" if path[-5] != "x" else "z") + path[-4:]
    confirm_token = "/unsubscribe/" + web.ctx.tokens.confirm(sid)
    for method in (client.get, client.post):
        for bad in (tampered, confirm_token, "/unsubscribe/nonsense", "/unsubscribe/a%0Ab"):
            resp = method(bad)
            assert resp.status_code == 400, bad
            body = resp.get_data(as_text=True)
            assert "Traceback" not in body and "signature" not in body.lower()
            assert resp.headers["Referrer-Policy"] == "no-referrer"
        unknown = method("/unsubscribe/" + web.ctx.tokens.unsubscribe(987654))
        assert unknown.status_code == 404
        assert "There is nothing here" in unknown.get_data(as_text=True)
    assert _status(web) == SubscriberStatus.ACTIVE


def test_unsubscribe_tokens_never_expire(web: Web) -> None:
    import time_machine

    from newsletter.models import utcnow

    _, path = _active(web)
    from datetime import timedelta

    with time_machine.travel(utcnow() + timedelta(days=3650)):
        assert web.client().post(path).status_code == 200
    assert _status(web) == SubscriberStatus.UNSUBSCRIBED


# --------------------------------------------------------------------------- health, errors


def test_healthz(web: Web) -> None:
    resp = web.client().get("/healthz")
    assert resp.status_code == 200 and resp.get_data(as_text=True) == "ok\n"


@pytest.mark.sqlite_only
def test_healthz_503_when_the_database_does_not_answer(
    env: dict[str, str], tmp_path: object
) -> None:
    from pathlib import Path

    settings = web_settings(env)
    ctx = Context.open(settings)
    app = create_app(ctx)
    db_file = Path(settings.database_url.removeprefix("sqlite:///"))
    ctx.db.dispose()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_file}{suffix}").unlink(missing_ok=True)
    db_file.mkdir()  # a directory where the database was: SQLite cannot open it
    try:
        resp = app.test_client().get("/healthz")
        assert resp.status_code == 503
        assert "Traceback" not in resp.get_data(as_text=True)
    finally:
        web_state(app).mailer.close()
        ctx.close()


def test_unexpected_error_is_a_plain_500_without_details(
    web: Web, caplog: pytest.LogCaptureFixture
) -> None:
    # A real fault: the table the subscribe route writes to is gone.
    with web.ctx.db.write() as session:
        session.execute(text("DROP TABLE deliveries"))
        session.execute(text("DROP TABLE bounce_events"))  # it points at subscribers too
        session.execute(text("DROP TABLE subscribers"))
    client = web.client()
    form = client.get("/subscribe").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert token
    resp = client.post("/subscribe", data={"csrf_token": token.group(1), "email": "a@example.com"})
    assert resp.status_code == 500
    body = resp.get_data(as_text=True)
    assert "Something went wrong" in body
    for leak in ("Traceback", "sqlite", "subscribers", "OperationalError", 'File "'):
        assert leak not in body
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert any(r.levelname == "ERROR" and r.exc_info for r in caplog.records)
    unsub = client.post("/unsubscribe/" + web.ctx.tokens.unsubscribe(1))
    assert unsub.status_code == 500 and "Traceback" not in unsub.get_data(as_text=True)


def test_unknown_routes_and_wrong_methods_get_plain_pages(web: Web) -> None:
    client = web.client()
    missing = client.get("/nope")
    assert missing.status_code == 404 and "There is nothing here" in missing.text
    assert client.put("/subscribe").status_code == 405
    assert client.get("/subscribe/../etc/passwd").status_code == 404
    assert client.post("/healthz").status_code == 405
    big = client.post("/subscribe", data={"email": "x" * 100_000})
    assert big.status_code in (400, 413) and "Traceback" not in big.text


def test_no_route_redirects_anywhere(web: Web) -> None:
    client = web.client()
    _, path = _active(web)
    for resp in (
        client.get("/?next=https://evil.example/"),
        client.get("/subscribe?next=//evil.example"),
        client.post(path + "?next=https://evil.example/"),
        client.get("/archive?next=https://evil.example/"),
    ):
        assert resp.status_code < 300 and "Location" not in resp.headers


def test_serve_command_help_and_bad_port(cli_env: dict[str, str]) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    assert "--host" in result.output and "--port" in result.output
    bad = runner.invoke(main, ["serve", "--port", "70000"])
    assert bad.exit_code == 2 and "70000" in bad.output


def test_rate_limit_setting_is_validated(make_web: Callable[..., Web]) -> None:
    from newsletter.config import ConfigError

    with pytest.raises(ConfigError, match="NEWSLETTER_WEB_RATE_IP: expected COUNT/PERIOD"):
        make_web(NEWSLETTER_WEB_RATE_IP="lots")
