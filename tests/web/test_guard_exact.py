"""Exact behaviour of ``web.guard``, piece by piece (issue 16, mutants).

The headers, error pages and CSRF helpers run in a small Flask app that has only
``guard.install`` and the shipped templates, with routes that set each page kind
(plain, token, archive, own policy, script); the limiters run on their own with an
injected clock, ``SharedLimiter`` on this test's real database.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask, abort, g, make_response, render_template_string, session
from flask.typing import ResponseReturnValue
from sqlalchemy import create_engine, delete, select
from sqlalchemy.exc import SAWarning
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.test import TestResponse

from newsletter.config import Settings
from newsletter.context import Context
from newsletter.models import Throttle
from newsletter.web import guard
from newsletter.web.guard import (
    Limits,
    RateLimiter,
    SharedLimiter,
    address_key,
    csrf_token,
    csrf_valid,
    error_page,
    ip_key,
)

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
NONCE = re.compile(r"^[A-Za-z0-9_-]{22}$")  # 16 random bytes, URL-safe base64


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- the app


def guarded_app(template_folder: Path = TEMPLATES) -> Flask:
    """Flask with nothing but the guard installed, and one route per kind of page."""
    app = Flask("guard_exact", template_folder=str(template_folder), static_folder=None)
    app.config.update(SECRET_KEY="guard-test-secret", PROPAGATE_EXCEPTIONS=False)
    guard.install(app)
    app.jinja_env.globals.update(
        language="en", site_name="The Daily Digest", postal_address="1 Fleet Street"
    )

    @app.route("/page", methods=["GET", "POST"])
    def page() -> str:
        return f"{guard.csp_nonce()}|{guard.csp_nonce()}"  # one nonce per response

    @app.get("/form")
    def form() -> str:
        return render_template_string(
            '<input name="{{ csrf_field }}" value="{{ csrf_token() }}">'
            '<style nonce="{{ csp_nonce() }}"></style>'
        )

    @app.get("/archive")
    def archive() -> str:
        guard.archive_page()
        return "frozen issue"

    @app.get("/script")
    def script() -> str:
        guard.allow_script()
        return guard.csp_nonce()

    @app.get("/own-policy")
    def own_policy() -> str:
        g.csp = "default-src 'none'; frame-ancestors 'self'"
        g.frame_options = "SAMEORIGIN"
        return "framed preview"

    @app.get("/token")
    def token() -> ResponseReturnValue:
        guard.no_referrer()
        response = make_response("token page")
        response.headers["Referrer-Policy"] = "origin"  # the guard has the last word
        response.headers["Cache-Control"] = "public, max-age=60"
        return response

    @app.get("/own-headers")
    def own_headers() -> ResponseReturnValue:
        response = make_response("own headers")
        response.headers["Referrer-Policy"] = "same-origin"  # kept: only defaults are added
        response.headers["Cache-Control"] = "private, max-age=5"
        return response

    @app.get("/missing")
    def missing() -> str:
        abort(404)

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("boom")

    return app


def sent(response: TestResponse) -> dict[str, str]:
    """The headers as sent, names spelled exactly, without the body's own."""
    body = {"Content-Type", "Content-Length", "Set-Cookie", "Vary"}
    return {name: value for name, value in response.headers.items() if name not in body}


def nonce_of(response: TestResponse) -> str:
    """The style nonce the policy names (checked against the page's own elsewhere)."""
    found = re.search(r"style-src 'nonce-([^']+)'", response.headers["Content-Security-Policy"])
    assert found is not None
    return found.group(1)


def page_csp(nonce: str, script: bool = False) -> str:
    scripts = f"script-src 'nonce-{nonce}'; " if script else ""
    return (
        f"default-src 'none'; style-src 'nonce-{nonce}'; {scripts}img-src 'self' data:; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


BASE = {"X-Content-Type-Options": "nosniff", "Cross-Origin-Opener-Policy": "same-origin"}


# --------------------------------------------------------------------------- headers


def test_plain_page_without_a_session_is_cacheable_with_a_nonce_policy() -> None:
    response = guarded_app().test_client().get("/page")
    first, second = response.get_data(as_text=True).split("|")
    assert first == second and NONCE.match(first)
    assert sent(response) == {
        "Content-Security-Policy": page_csp(first),
        **BASE,
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "strict-origin-when-cross-origin",
    }


def test_each_response_has_its_own_nonce() -> None:
    client = guarded_app().test_client()
    nonces = {client.get("/page").get_data(as_text=True) for _ in range(3)}
    assert len(nonces) == 3


def test_any_post_answer_is_not_stored() -> None:
    response = guarded_app().test_client().post("/page")
    nonce = response.get_data(as_text=True).split("|")[0]
    assert sent(response) == {
        "Content-Security-Policy": page_csp(nonce),
        **BASE,
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "strict-origin-when-cross-origin",
        "Cache-Control": "no-store",
    }


def test_a_session_with_a_csrf_token_makes_every_page_not_stored() -> None:
    client = guarded_app().test_client()
    form = client.get("/form")
    html = form.get_data(as_text=True)
    token = re.fullmatch(
        r'<input name="csrf_token" value="([^"]+)"><style nonce="([^"]+)"></style>', html
    )
    assert token is not None
    with client.session_transaction() as stored:
        assert stored["csrf"] == token.group(1)
    assert sent(form) == {
        "Content-Security-Policy": page_csp(token.group(2)),
        **BASE,
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "strict-origin-when-cross-origin",
        "Cache-Control": "no-store",
    }
    later = client.get("/page")  # a GET, but the browser holds a CSRF session now
    assert sent(later)["Cache-Control"] == "no-store"
    own = client.get("/own-headers")  # a view's own choices stand
    assert sent(own) == {
        "Content-Security-Policy": page_csp(nonce_of(own)),
        **BASE,
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "private, max-age=5",
    }


def test_token_page_sends_no_referrer_and_is_never_stored() -> None:
    response = guarded_app().test_client().get("/token")
    assert sent(response) == {
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
        "Content-Security-Policy": page_csp(nonce_of(response)),
        **BASE,
        "X-Frame-Options": "DENY",
    }


def test_archive_page_allows_inline_styles_and_remote_images_only() -> None:
    response = guarded_app().test_client().get("/archive")
    assert sent(response) == {
        "Content-Security-Policy": (
            "default-src 'none'; style-src 'unsafe-inline'; img-src https: http: data:; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        ),
        **BASE,
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "strict-origin-when-cross-origin",
    }


def test_a_blueprints_own_policy_and_framing_replace_the_defaults() -> None:
    response = guarded_app().test_client().get("/own-policy")
    assert sent(response) == {
        "Content-Security-Policy": "default-src 'none'; frame-ancestors 'self'",
        **BASE,
        "X-Frame-Options": "SAMEORIGIN",
        "Referrer-Policy": "strict-origin-when-cross-origin",
    }


def test_allow_script_adds_the_same_nonce_for_scripts() -> None:
    response = guarded_app().test_client().get("/script")
    nonce = response.get_data(as_text=True)
    assert NONCE.match(nonce)
    assert response.headers["Content-Security-Policy"] == page_csp(nonce, script=True)


def test_error_pages_get_the_same_headers() -> None:
    response = guarded_app().test_client().get("/missing")
    assert response.status_code == 404
    nonce = re.search(r'<style nonce="([^"]+)">', response.get_data(as_text=True))
    assert nonce is not None
    assert sent(response) == {
        "Content-Security-Policy": page_csp(nonce.group(1)),
        **BASE,
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "strict-origin-when-cross-origin",
    }


# --------------------------------------------------------------------------- CSRF


def test_csrf_token_is_made_once_per_session() -> None:
    app = guarded_app()
    with app.test_request_context():
        token = csrf_token()
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)  # 32 random bytes
        assert session["csrf"] == token
        assert csrf_token() == token


@pytest.mark.parametrize(
    ("stored", "kept"),
    [("a" * 32, True), ("b" * 43, True), ("c" * 31, False), (12345, False), ("", False)],
)
def test_csrf_token_replaces_a_short_or_odd_one(stored: object, kept: bool) -> None:
    app = guarded_app()
    with app.test_request_context():
        session["csrf"] = stored
        token = csrf_token()
        if kept:
            assert token == stored
        else:
            assert token != stored and len(token) == 43
        assert session["csrf"] == token


@pytest.mark.parametrize(
    ("stored", "posted", "valid"),
    [
        ("t" * 43, "t" * 43, True),
        ("t" * 43, "u" * 43, False),
        ("t" * 43, "t" * 42, False),
        ("t" * 43, None, False),
        ("XXXX", None, False),
        ("t" * 43, "", False),
        (None, "t" * 43, False),
        (12345, "12345", False),
        ("", "", False),
        ("", "x", False),
    ],
)
def test_csrf_valid(stored: object, posted: str | None, valid: bool) -> None:
    app = guarded_app()
    data = {} if posted is None else {"csrf_token": posted}
    with app.test_request_context("/subscribe", method="POST", data=data):
        if stored is not None:
            session["csrf"] = stored
        assert csrf_valid() is valid


# --------------------------------------------------------------------------- error pages

_TEXTS = {
    400: (
        "This link does not work",
        "The link is incomplete or was changed; links often get cut short when they are"
        " copied out of an email.",
        "Open the link again straight from the email, or copy all of it. To stop the emails,"
        " the Unsubscribe link in any other issue works too; to join, subscribe again below.",
    ),
    403: ("Forbidden", "This request was refused.", ""),
    404: (
        "Not found",
        "There is nothing here: the page does not exist, or the subscription this link"
        " belonged to has been deleted.",
        "To get the emails, subscribe again below; earlier issues are in the archive.",
    ),
    405: ("Not allowed", "That method is not allowed here.", ""),
    413: ("Too large", "That request is too large.", ""),
    429: ("Too many requests", "Too many attempts. Please wait a while and try again.", ""),
    500: (
        "Something went wrong",
        "Sorry, something went wrong on our side. Please try later.",
        "",
    ),
    503: ("Unavailable", "The service is unavailable right now. Please try later.", ""),
}


def _content(code: int) -> str:
    title, message, todo = _TEXTS[code]
    todo_html = f"<p>{todo}</p>" if todo else ""
    return f"<h1>{title}</h1>\n<p>{message}</p>\n{todo_html}\n"


@pytest.mark.parametrize("code", sorted(_TEXTS))
def test_error_page_says_what_happened_and_what_to_do(code: int) -> None:
    app = guarded_app()
    with app.test_request_context():
        page, status = error_page(code)
    assert status == code
    assert f"<title>{_TEXTS[code][0]} &middot; The Daily Digest</title>" in page
    assert _content(code) + '<p class="muted">' in page


def test_an_unknown_code_keeps_its_status_with_the_generic_text() -> None:
    app = guarded_app()
    with app.test_request_context():
        page, status = error_page(418)
    assert status == 418
    assert _content(500) + '<p class="muted">' in page


def test_error_template_gets_code_title_message_and_todo(tmp_path: Path) -> None:
    """An operator's own templates (NEWSLETTER_TEMPLATES_DIR) get all four, "" for no todo."""
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "error.html").write_text(
        "{{ code }}|{{ title }}|{{ message }}|{{ todo }}", encoding="utf-8"
    )
    app = guarded_app(tmp_path)
    with app.test_request_context():
        assert error_page(404) == ("404|Not found|" + "|".join(_TEXTS[404][1:]), 404)
        assert error_page(403) == ("403|Forbidden|This request was refused.|", 403)
        assert error_page(429) == (
            "429|Too many requests|Too many attempts. Please wait a while and try again.|",
            429,
        )


def test_a_failing_error_template_falls_back_to_plain_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "error.html").write_text("{{ title.missing() }}", encoding="utf-8")
    app = guarded_app(tmp_path)
    with caplog.at_level(logging.ERROR, logger="newsletter.web"), app.test_request_context():
        assert error_page(404) == ("404 Not found\n", 404)
        assert error_page(418) == ("418 Something went wrong\n", 418)
    records = [r for r in caplog.records if r.name == "newsletter.web"]
    assert [r.getMessage() for r in records] == ["error template failed"] * 2
    assert all(r.levelno == logging.ERROR and r.exc_info for r in records)


def test_an_unexpected_exception_is_a_plain_500_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = guarded_app().test_client()
    with caplog.at_level(logging.ERROR, logger="newsletter.web"):
        response = client.get("/boom")
    assert response.status_code == 500
    html = response.get_data(as_text=True)
    assert _content(500) in html and "boom" not in html and "Traceback" not in html
    records = [r for r in caplog.records if r.name == "newsletter.web"]
    assert [r.getMessage() for r in records] == ["unhandled error on GET /boom"]
    assert records[0].exc_info is not None and records[0].exc_info[0] is RuntimeError


def test_http_errors_become_their_own_page() -> None:
    response = guarded_app().test_client().get("/missing")
    assert response.status_code == 404 and _content(404) in response.get_data(as_text=True)
    wrong_method = guarded_app().test_client().delete("/page")
    assert wrong_method.status_code == 405
    assert _content(405) in wrong_method.get_data(as_text=True)


def test_the_handlers_on_their_own() -> None:
    """HTTP errors handed to the catch-all, and one without a code (Flask passes
    neither to these handlers today; they must still answer a plain page)."""
    app = guarded_app()
    with app.test_request_context("/x"):
        page, status = guard._handle_exception(NotFound())
        assert status == 404 and _content(404) in page
        page, status = guard._handle_http(HTTPException())
        assert status == 500 and _content(500) in page


# --------------------------------------------------------------------------- keys


@pytest.mark.parametrize(
    ("remote", "key"),
    [
        ("203.0.113.7", "ip:203.0.113.7"),
        ("203.0.113.7%eth0", "ip:203.0.113.7"),
        ("203.0.113.7%a%b", "ip:203.0.113.7"),
        ("2001:db8:1:2:3:4:5:6", "ip:2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "ip:2001:db8:1:2::/64"),
        ("fe80::1%eth0", "ip:fe80::/64"),
        ("::ffff:203.0.113.7", "ip:203.0.113.7"),  # IPv4-mapped: the IPv4 client
        ("unix-socket", "ip:unix-socket"),
        ("", "ip:"),
    ],
)
def test_ip_key(remote: str, key: str) -> None:
    assert ip_key(remote) == key


def test_address_key_is_the_canonical_inbox() -> None:
    assert address_key(" Victim+1@Example.COM") == "addr:victim@example.com"
    assert address_key("v.ictim+x@googlemail.com") == "addr:victim@gmail.com"


# --------------------------------------------------------------------------- Limits


def test_limits_from_settings_in_this_process(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(NEWSLETTER_WEB_RATE_IP="7/2m", NEWSLETTER_WEB_RATE_ADDRESS="4/1h")
    limits = Limits.from_settings(settings)
    assert isinstance(limits.per_ip, RateLimiter) and isinstance(limits.per_address, RateLimiter)
    assert (limits.per_ip.limit, limits.per_ip.period) == (7, 120.0)
    assert (limits.per_address.limit, limits.per_address.period) == (4, 3600.0)


def test_limits_from_settings_shared_on_the_database(
    make_settings: Callable[..., Settings], ctx: Context
) -> None:
    settings = make_settings(NEWSLETTER_WEB_RATE_IP="7/2m", NEWSLETTER_WEB_RATE_ADDRESS="4/1h")
    limits = Limits.from_settings(settings, ctx.db)
    per_ip, per_address = limits.per_ip, limits.per_address
    assert isinstance(per_ip, SharedLimiter) and isinstance(per_address, SharedLimiter)
    assert (per_ip.db, per_ip.name, per_ip.limit, per_ip.period) == (ctx.db, "ip", 7, 120.0)
    assert (per_address.db, per_address.name, per_address.limit, per_address.period) == (
        ctx.db,
        "address",
        4,
        3600.0,
    )


# --------------------------------------------------------------------------- RateLimiter


def test_a_hit_leaves_the_window_exactly_one_period_later() -> None:
    clock = Clock(1000.0)
    limiter = RateLimiter(limit=1, period=60.0, clock=clock)
    assert limiter.hit("a") is True
    clock.now = 1059.5
    assert limiter.hit("a") is False
    clock.now = 1060.0
    assert limiter.hit("a") is True


def test_pruning_starts_when_max_keys_is_reached() -> None:
    clock = Clock(1000.0)
    limiter = RateLimiter(limit=1, period=60.0, max_keys=2, clock=clock)
    assert limiter.hit("a") and limiter.hit("b")
    clock.now = 1100.0
    assert limiter.hit("c")  # two keys held: idle ones go before a third is added
    assert sorted(limiter._hits) == ["c"]


def test_idle_keys_are_pruned_up_to_and_including_the_horizon() -> None:
    clock = Clock()
    limiter = RateLimiter(limit=1, period=60.0, max_keys=4, clock=clock)
    for key, at in (("a", 1000.0), ("b", 1040.0), ("c", 1090.0), ("d", 1095.0)):
        clock.now = at
        assert limiter.hit(key)
    clock.now = 1100.0  # horizon 1040: a and b are idle, c and d are not
    assert limiter.hit("e")
    assert sorted(limiter._hits) == ["c", "d", "e"]
    assert limiter.hit("d") is False  # still counted


def _fill(limiter: RateLimiter, clock: Clock, count: int) -> list[str]:
    """``count`` keys, one hit each a second apart, named so that the oldest sorts last."""
    keys = [chr(ord("a") + count - 1 - i) for i in range(count)]
    for i, key in enumerate(keys):
        clock.now = 1000.0 + i
        assert limiter.hit(key)
    clock.now = 1000.0 + count
    return keys


def test_full_of_busy_keys_the_least_recently_used_tenth_is_forgotten() -> None:
    clock = Clock()
    limiter = RateLimiter(limit=1, period=1000.0, max_keys=20, clock=clock)
    keys = _fill(limiter, clock, 20)  # "t" (oldest) … "a" (newest), all still counted
    assert limiter.hit("new")
    assert sorted(limiter._hits) == sorted([*keys[2:], "new"])
    assert limiter.hit(keys[0]) is True  # forgotten: counted afresh
    assert limiter.hit(keys[2]) is False  # remembered


def test_with_fewer_than_twenty_keys_one_key_is_forgotten() -> None:
    clock = Clock()
    limiter = RateLimiter(limit=1, period=1000.0, max_keys=10, clock=clock)
    keys = _fill(limiter, clock, 10)
    assert limiter.hit("new")
    assert sorted(limiter._hits) == sorted([*keys[1:], "new"])


# --------------------------------------------------------------------------- SharedLimiter


def _rows(ctx: Context) -> dict[str, tuple[float, int]]:
    with ctx.db.read() as s:
        return {r.key: (r.window_start, r.hits) for r in s.scalars(select(Throttle))}


def test_shared_limit_counts_exactly(ctx: Context) -> None:
    limiter = SharedLimiter(ctx.db, "ip", limit=3, period=60.0, clock=Clock(1000.0))
    assert [limiter.hit("k") for _ in range(5)] == [True, True, True, False, False]
    assert _rows(ctx) == {"ip|k": (1000.0, 3)}


def test_shared_window_restarts_exactly_one_period_after_it_began(ctx: Context) -> None:
    clock = Clock(1000.0)
    limiter = SharedLimiter(ctx.db, "ip", limit=2, period=60.0, clock=clock)
    # The upsert names only real columns: SQLAlchemy warns about any other name, and
    # PostgreSQL would refuse it even where SQLite lets it pass.
    with warnings.catch_warnings():
        warnings.simplefilter("error", SAWarning)
        assert [limiter.hit("k"), limiter.hit("k"), limiter.hit("k")] == [True, True, False]
        clock.now = 1060.0
        assert [limiter.hit("k"), limiter.hit("k"), limiter.hit("k")] == [True, True, False]
    assert _rows(ctx) == {"ip|k": (1060.0, 2)}


def test_a_refusal_lasts_until_the_window_ends_not_a_period_after_it(ctx: Context) -> None:
    clock = Clock(1000.0)
    limiter = SharedLimiter(ctx.db, "ip", limit=1, period=60.0, clock=clock)
    assert limiter.hit("k") is True
    clock.now = 1030.0
    assert limiter.hit("k") is False
    clock.now = 1060.0
    assert limiter.hit("k") is True


def test_a_key_found_full_is_refused_without_asking_the_database(ctx: Context) -> None:
    clock = Clock(1000.0)
    limiter = SharedLimiter(ctx.db, "ip", limit=1, period=60.0, clock=clock)
    assert limiter.hit("k") is True
    clock.now = 1010.0
    assert limiter.hit("k") is False
    with ctx.db.write() as s:  # the count is gone; only the refusal remembered it
        s.execute(delete(Throttle))
    clock.now = 1059.0
    assert limiter.hit("k") is False
    assert _rows(ctx) == {}  # no statement ran
    another = SharedLimiter(ctx.db, "ip", limit=1, period=60.0, clock=clock)
    assert another.hit("k") is True  # a process that never saw it full asks the database


def test_the_first_hit_is_allowed_whatever_the_clock(ctx: Context) -> None:
    limiter = SharedLimiter(ctx.db, "ip", limit=1, period=60.0, clock=Clock(0.0))
    assert limiter.hit("k") is True
    assert limiter.hit("k") is False


def test_the_refusal_cache_is_bounded(ctx: Context) -> None:
    clock = Clock(1000.0)
    limiter = SharedLimiter(ctx.db, "ip", limit=1, period=60.0, clock=clock, max_cached=2)
    for key in ("a", "b", "c"):
        assert [limiter.hit(key), limiter.hit(key)] == [True, False]
    # The third refusal found the cache full and started it again with just "c".
    with ctx.db.write() as s:
        s.execute(delete(Throttle))
    clock.now = 1010.0
    assert limiter.hit("c") is False  # still cached
    assert limiter.hit("a") is True  # forgotten, and the database no longer counts it


def test_keys_are_cut_to_the_column_length(ctx: Context) -> None:
    limiter = SharedLimiter(ctx.db, "ip", limit=1, period=60.0, clock=Clock(1000.0))
    assert limiter.hit("x" * 397 + "a" + "x" * 100) is True
    assert limiter.hit("x" * 397 + "b") is False  # the same first 400 characters
    assert list(_rows(ctx)) == ["ip|" + "x" * 397]


@pytest.mark.parametrize("last_in_callers_transaction", [False, True])
def test_every_thousandth_hit_deletes_this_limiters_ended_windows(
    ctx: Context, last_in_callers_transaction: bool
) -> None:
    clock = Clock(1000.0)
    ip = SharedLimiter(ctx.db, "ip", limit=10_000, period=60.0, clock=clock)
    other = SharedLimiter(ctx.db, "address", limit=10_000, period=60.0, clock=clock)
    assert other.hit("old")  # another limiter's ended window: not ip's to delete
    assert ip.hit("old")  # ip's hit 1
    clock.now = 1940.0
    assert ip.hit("edge")  # hit 2: its window ends exactly when hit 1000 comes
    clock.now = 2000.0
    with ctx.db.write() as s:
        assert all(ip.hit("k", s) for _ in range(997))  # hits 3 to 999
    assert sorted(_rows(ctx)) == ["address|old", "ip|edge", "ip|k", "ip|old"]
    if last_in_callers_transaction:
        with ctx.db.write() as s:
            assert ip.hit("k", s)
    else:
        assert ip.hit("k")
    assert _rows(ctx) == {"address|old": (1000.0, 1), "ip|k": (2000.0, 998)}


@pytest.mark.parametrize(
    ("url", "conflict", "returning"),
    [
        ("postgresql+psycopg://", "ON CONFLICT (key) DO UPDATE SET ", "RETURNING throttles.hits"),
        ("sqlite://", 'ON CONFLICT ("key") DO UPDATE SET ', "RETURNING hits"),
    ],
)
def test_the_upsert_is_each_databases_own(
    ctx: Context, url: str, conflict: str, returning: str
) -> None:
    """Each backend gets its own upsert, naming the conflict target (SQLite may do
    without one; PostgreSQL refuses that): checked on either backend, no server needed."""
    dialect = create_engine(url).dialect  # never connects
    limiter = SharedLimiter(ctx.db, "ip", limit=3, period=60.0)
    sql = str(limiter._upsert(dialect.name, "ip|k", 1000.0).compile(dialect=dialect))
    assert sql.startswith("INSERT INTO throttles ")
    assert conflict in sql and sql.endswith(" " + returning)
