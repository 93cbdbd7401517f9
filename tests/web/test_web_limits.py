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
