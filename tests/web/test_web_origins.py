"""The footer form posted from the site's own origin: HTML, JSON with CORS, refusals.

Flask's test client against a real SQLite file; confirmation emails arrive at a
real aiosmtpd server, so "sends nothing" is checked at the receiving end.
"""

from __future__ import annotations

from collections.abc import Callable
from html.parser import HTMLParser

import pytest
from _web_support import Web, make_web, subscribe, web, web_settings, without_nonces
from click.testing import CliRunner

from newsletter.cli import main
from newsletter.web.embed import embed_snippet

__all__ = ["make_web", "web"]  # fixtures

SITE = "https://www.site.example"
OTHER_SITE = "https://evil.example"


@pytest.fixture
def site_web(make_web: Callable[..., Web]) -> Web:
    return make_web(NEWSLETTER_ALLOWED_ORIGINS=f"{SITE}, https://site.example")


def _post(web: Web, data: dict[str, str], ip: str = "198.51.100.9", **headers: str):  # type: ignore[no-untyped-def]
    """A plain form post with no cookie and no token of ours, as another site's page sends."""
    client = web.app.test_client()  # a fresh client: no session cookie at all
    client.environ_base.update({"wsgi.url_scheme": "https", "HTTP_HOST": "news.example.com"})
    return client.post("/subscribe", data=data, headers=headers, environ_base={"REMOTE_ADDR": ip})


def _json(web: Web, body: object, ip: str = "198.51.100.9", **headers: str):  # type: ignore[no-untyped-def]
    client = web.app.test_client()
    client.environ_base.update({"wsgi.url_scheme": "https", "HTTP_HOST": "news.example.com"})
    return client.post(
        "/subscribe",
        json=body,
        headers={"Accept": "application/json", **headers},
        environ_base={"REMOTE_ADDR": ip},
    )


# --------------------------------------------------------------------------- allowed origin


def test_footer_form_from_an_allowed_origin_needs_no_token(site_web: Web) -> None:
    resp = _post(site_web, {"email": "footer@example.com", "name": "Foot"}, Origin=SITE)
    assert resp.status_code == 200
    assert "Check your inbox" in resp.get_data(as_text=True)
    assert resp.headers["Access-Control-Allow-Origin"] == SITE
    assert "Origin" in resp.headers["Vary"]
    row = site_web.subscriber("footer@example.com")
    assert row is not None and row.status == "pending" and row.name == "Foot"
    [mail] = site_web.mails_to("footer@example.com")
    assert b"/confirm/" in mail.data


def test_referer_stands_in_when_the_browser_sends_no_origin(site_web: Web) -> None:
    resp = _post(site_web, {"email": "ref@example.com"}, Referer="https://site.example/a/story")
    assert resp.status_code == 200
    assert len(site_web.mails_to("ref@example.com")) == 1


def test_next_on_an_allowed_origin_is_a_303_elsewhere_the_page(site_web: Web) -> None:
    back = f"{SITE}/thanks?from=footer"
    resp = _post(site_web, {"email": "next@example.com", "next": back}, Origin=SITE)
    assert resp.status_code == 303 and resp.headers["Location"] == back
    resp = _post(
        site_web, {"email": "next2@example.com", "next": f"{OTHER_SITE}/phish"}, Origin=SITE
    )
    assert resp.status_code == 200 and "Check your inbox" in resp.get_data(as_text=True)
    assert "Location" not in resp.headers
    resp = _post(
        site_web, {"email": "next3@example.com", "next": "javascript:alert(1)"}, Origin=SITE
    )
    assert resp.status_code == 200 and "Location" not in resp.headers
    assert len(site_web.mails_to("next@example.com")) == 1


def test_json_with_a_cors_preflight(site_web: Web) -> None:
    client = site_web.app.test_client()
    pre = client.options(
        "/subscribe",
        headers={
            "Origin": SITE,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert pre.status_code == 204
    assert pre.headers["Access-Control-Allow-Origin"] == SITE
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    assert "content-type" in pre.headers["Access-Control-Allow-Headers"].lower()
    assert "Origin" in pre.headers["Vary"]
    assert "Access-Control-Allow-Credentials" not in pre.headers

    resp = _json(site_web, {"email": "script@example.com", "name": "Scripted"}, Origin=SITE)
    assert resp.status_code == 200 and resp.is_json
    assert resp.get_json()["ok"] is True and resp.get_json()["status"] == "check_inbox"
    assert resp.headers["Access-Control-Allow-Origin"] == SITE
    assert len(site_web.mails_to("script@example.com")) == 1

    bad = _json(site_web, {"email": "not an address"}, Origin=SITE)
    assert bad.status_code == 400 and bad.get_json()["status"] == "email"
    assert bad.get_json()["ok"] is False
    assert bad.headers["Access-Control-Allow-Origin"] == SITE


def test_preflight_from_another_origin_or_for_other_headers_is_refused(site_web: Web) -> None:
    client = site_web.app.test_client()
    for headers in (
        {"Origin": OTHER_SITE, "Access-Control-Request-Method": "POST"},
        {"Origin": SITE, "Access-Control-Request-Method": "DELETE"},
        {
            "Origin": SITE,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-custom",
        },
    ):
        pre = client.options("/subscribe", headers=headers)
        assert pre.status_code == 403, headers
        assert "Access-Control-Allow-Origin" not in pre.headers


def test_same_answer_for_known_and_unknown_addresses_cross_origin(site_web: Web) -> None:
    first = _post(site_web, {"email": "known@example.com"}, Origin=SITE)
    site_web.settle()
    with site_web.ctx.db.write() as session:
        from newsletter import subscribers as subs

        row = subs.find(session, "known@example.com")
        assert row is not None
        subs.confirm(session, row.id, "127.0.0.1")
    known = _post(site_web, {"email": "known@example.com"}, ip="198.51.100.10", Origin=SITE)
    unknown = _post(site_web, {"email": "fresh@example.com"}, ip="198.51.100.11", Origin=SITE)
    assert first.status_code == known.status_code == unknown.status_code == 200
    assert without_nonces(known.get_data(as_text=True)) == without_nonces(
        unknown.get_data(as_text=True)
    )
    j_known = _json(site_web, {"email": "known@example.com"}, ip="198.51.100.12", Origin=SITE)
    j_new = _json(site_web, {"email": "fresh2@example.com"}, ip="198.51.100.13", Origin=SITE)
    assert j_known.get_json() == j_new.get_json()
    # One confirmation link; the later requests for an active reader get the
    # "already subscribed" note (no link), exactly as from our own form.
    mails = site_web.mails_to("known@example.com")
    assert [b"/confirm/" in m.data for m in mails] == [True, False, False]


def test_honeypot_from_an_allowed_origin_looks_the_same_and_sends_nothing(site_web: Web) -> None:
    bot = _post(site_web, {"email": "bot@example.com", "website": "http://spam"}, Origin=SITE)
    person = _post(site_web, {"email": "person@example.com"}, ip="198.51.100.20", Origin=SITE)
    assert bot.status_code == person.status_code == 200
    assert without_nonces(bot.get_data(as_text=True)) == without_nonces(
        person.get_data(as_text=True)
    )
    assert site_web.mails_to("bot@example.com") == []
    assert site_web.subscriber("bot@example.com") is None


def test_rate_limits_apply_to_the_cross_origin_path(make_web: Callable[..., Web]) -> None:
    web = make_web(
        NEWSLETTER_ALLOWED_ORIGINS=SITE,
        NEWSLETTER_WEB_RATE_IP="2/1h",
        NEWSLETTER_WEB_RATE_ADDRESS="1/1h",
    )
    assert _post(web, {"email": "a@example.com"}, Origin=SITE).status_code == 200
    # per address: a second request for the same inbox (+tag ignored) from another IP
    again = _json(web, {"email": "a+x@example.com"}, ip="198.51.100.77", Origin=SITE)
    assert again.status_code == 429 and again.get_json()["status"] == "rate_limited"
    # per IP: the same client's third attempt, whatever the address
    assert _post(web, {"email": "b@example.com"}, Origin=SITE).status_code == 200
    assert _post(web, {"email": "c@example.com"}, Origin=SITE).status_code == 429
    assert web.mails_to("c@example.com") == [] and len(web.mails_to("a@example.com")) == 1


# --------------------------------------------------------------------------- refused


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": OTHER_SITE},
        {"Origin": "https://www.site.example.evil.example"},
        {"Origin": "http://www.site.example"},  # scheme counts
        {"Origin": "null"},
        {"Referer": f"{OTHER_SITE}/page"},
        {"Sec-Fetch-Site": "cross-site"},  # no Origin, no Referer, but cross-site
    ],
)
def test_other_cross_origin_posts_are_refused_and_send_nothing(
    site_web: Web, headers: dict[str, str]
) -> None:
    resp = _post(site_web, {"email": "victim@example.com"}, **headers)
    assert resp.status_code == 403
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert site_web.subscriber("victim@example.com") is None
    assert site_web.mails_to("victim@example.com") == []


def test_json_without_origin_or_referer_is_refused(site_web: Web) -> None:
    resp = _json(site_web, {"email": "victim@example.com"})
    assert resp.status_code == 403 and resp.get_json()["status"] == "refused"
    assert site_web.mails_to("victim@example.com") == []


def test_no_allowed_origins_means_every_cross_origin_post_is_refused(web: Web) -> None:
    resp = _post(web, {"email": "x@example.com"}, Origin=SITE)
    assert resp.status_code == 403
    assert web.mails_to("x@example.com") == []


def test_same_origin_posts_keep_the_csrf_token(site_web: Web) -> None:
    own = "https://news.example.com"
    missing = _post(site_web, {"email": "own@example.com"}, Origin=own)
    assert missing.status_code == 400 and "expired" in missing.get_data(as_text=True)
    plain = _post(site_web, {"email": "own@example.com"})  # no Origin, no Referer: same rule
    assert plain.status_code == 400
    ok = subscribe(site_web.client(), "own@example.com")
    assert ok.status_code == 200
    assert len(site_web.mails_to("own@example.com")) == 1


# --------------------------------------------------------------------------- embed


class _Fields(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.form: dict[str, str] = {}
        self.inputs: list[dict[str, str]] = []
        self.labels: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        if tag == "form":
            self.form = values
        elif tag == "input":
            self.inputs.append(values)
        elif tag == "label":
            self.labels.append(values.get("for", ""))


def test_embed_snippet_is_self_contained_and_accessible(make_web: Callable[..., Web]) -> None:
    web = make_web(NEWSLETTER_SITE_NAME="Ada & <Co>", NEWSLETTER_ALLOWED_ORIGINS=SITE)
    snippet = embed_snippet(web.ctx.settings)
    parsed = _Fields()
    parsed.feed(snippet)
    assert parsed.form["action"] == "https://news.example.com/subscribe"
    assert parsed.form["method"] == "post"
    names = {i["name"] for i in parsed.inputs}
    assert {"email", "name", "website"} <= names
    ids = {i["id"] for i in parsed.inputs}
    assert {"newsletter-email", "newsletter-name"} <= set(parsed.labels) <= ids
    assert "Ada &amp; &lt;Co&gt;" in snippet and "<Co>" not in snippet
    assert "script" not in parsed.tags and "link" not in parsed.tags and "style" not in parsed.tags
    assert "agree to receive" in snippet  # the consent line

    # Posting exactly the snippet's fields from the site works.
    data = {i["name"]: "" for i in parsed.inputs}
    data["email"] = "embedded@example.com"
    assert _post(web, data, Origin=SITE).status_code == 200
    assert len(web.mails_to("embedded@example.com")) == 1


def test_newsletter_embed_prints_the_snippet(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_ALLOWED_ORIGINS", SITE)
    result = CliRunner().invoke(main, ["embed"])
    assert result.exit_code == 0, result.output
    assert result.output == embed_snippet(web_settings(cli_env, NEWSLETTER_ALLOWED_ORIGINS=SITE))
    monkeypatch.setenv("NEWSLETTER_ALLOWED_ORIGINS", "not an origin")
    bad = CliRunner().invoke(main, ["embed"])
    assert bad.exit_code == 2 and "NEWSLETTER_ALLOWED_ORIGINS" in bad.output
    assert "Traceback" not in bad.output
