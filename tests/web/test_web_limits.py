"""Per-client limits that an attacker with an IPv6 /64 cannot dodge (issue 16, mutants)."""

from __future__ import annotations

from collections.abc import Callable

from _web_support import Web, make_web, subscribe

__all__ = ["make_web"]  # a fixture


def test_every_address_of_one_ipv6_64_shares_one_limit(make_web: Callable[..., Web]) -> None:
    web = make_web(NEWSLETTER_WEB_RATE_IP="3/1h")
    client = web.client()
    same_64 = ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3", "2001:db8:1:2::4"]
    codes = [
        subscribe(client, f"r{i}@example.com", ip=ip).status_code for i, ip in enumerate(same_64)
    ]
    assert codes == [200, 200, 200, 429]
    # Another /64, and IPv4 clients, have limits of their own.
    assert subscribe(client, "other@example.com", ip="2001:db8:1:3::1").status_code == 200
    assert subscribe(client, "v4@example.com", ip="203.0.113.50").status_code == 200


def _exact_headers(headers: object) -> dict[str, str]:
    import re

    wanted = (
        "Content-Security-Policy",
        "X-Content-Type-Options",
        "X-Frame-Options",
        "Cross-Origin-Opener-Policy",
        "Referrer-Policy",
        "Cache-Control",
    )
    got = {name: headers.get(name, "") for name in wanted}  # type: ignore[attr-defined]
    got["Content-Security-Policy"] = re.sub(
        r"'nonce-[A-Za-z0-9_-]+'", "'nonce-N'", got["Content-Security-Policy"]
    )
    return got


def test_security_headers_exactly(make_web: Callable[..., Web]) -> None:
    """Every value, spelled as browsers need it (a mutation probe changed them unnoticed)."""
    web = make_web()
    client = web.client()
    common = {
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
    }
    page_csp = (
        "default-src 'none'; style-src 'nonce-N'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
    form = client.get("/subscribe")  # sets the CSRF cookie: not to be cached
    assert _exact_headers(form.headers) == {
        **common,
        "Content-Security-Policy": page_csp,
        "Referrer-Policy": "strict-origin-when-cross-origin",
        "Cache-Control": "no-store",
    }
    fresh = web.app.test_client()  # no session: a cacheable page
    fresh.environ_base.update({"wsgi.url_scheme": "https", "HTTP_HOST": "news.example.com"})
    archive = fresh.get("/archive")
    assert _exact_headers(archive.headers) == {
        **common,
        "Content-Security-Policy": page_csp,
        "Referrer-Policy": "strict-origin-when-cross-origin",
        "Cache-Control": "",
    }
    token = web.ctx.tokens.unsubscribe(1)
    page = fresh.get(f"/unsubscribe/{token}")  # a token page, even when it is a 404
    assert _exact_headers(page.headers) == {
        **common,
        "Content-Security-Policy": page_csp,
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }
    posted = fresh.post("/subscribe", data={})  # any POST answer: never cached
    assert _exact_headers(posted.headers)["Cache-Control"] == "no-store"
