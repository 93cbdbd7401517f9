"""``newsletter serve`` as a real process: waitress, client IPs, graceful stop.

No browser here: plain HTTP with a cookie jar, so these run wherever Python does.
"""

from __future__ import annotations

import http.cookiejar
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from _databases import folder_database_url, query
from _web_support import csrf_from, link, start_serve, wait_for
from conftest import SMTPServer


def _browser() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )


def _subscribe(base: str, email: str, headers: dict[str, str] | None = None) -> str:
    opener = _browser()
    with opener.open(base + "/subscribe", timeout=10) as resp:
        token = csrf_from(resp.read().decode())
    body = urllib.parse.urlencode({"csrf_token": token, "email": email}).encode()
    request = urllib.request.Request(base + "/subscribe", data=body, headers=headers or {})
    with opener.open(request, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Server"] == "newsletter"  # waitress, not Werkzeug's dev server
        return str(resp.read().decode())


def _confirm(base: str, url: str, headers: dict[str, str] | None = None) -> None:
    request = urllib.request.Request(url, data=b"", headers=headers or {}, method="POST")
    with _browser().open(request, timeout=10) as resp:
        assert resp.status == 200 and "subscribed" in resp.read().decode()


def _ip(tmp_path: Path, email: str) -> str | None:
    rows = query(
        folder_database_url(tmp_path, "served.db"),
        "SELECT consent_ip FROM subscribers WHERE email = :email",
        email=email,
    )
    return None if not rows else str(rows[0][0]) if rows[0][0] is not None else None


def test_forwarded_for_is_ignored_unless_the_proxy_is_trusted(
    tmp_path: Path, smtp_server: SMTPServer
) -> None:
    spoof = {"X-Forwarded-For": "198.51.100.77"}
    direct = start_serve(tmp_path, smtp_server.url)
    try:
        page = _subscribe(direct.base, "direct@example.com", spoof)
        assert "Check your inbox" in page
        wait_for(lambda: any("direct@example.com" in m.rcpt_tos for m in smtp_server.messages))
        [mail] = [m for m in smtp_server.messages if "direct@example.com" in m.rcpt_tos]
        _confirm(direct.base, link(mail.message, "confirm", direct.base), spoof)
        assert _ip(tmp_path, "direct@example.com") == "127.0.0.1"
    finally:
        assert direct.stop() == 0
    proxied = start_serve(tmp_path, smtp_server.url, "--trusted-proxy", "127.0.0.1")
    try:
        _subscribe(proxied.base, "proxied@example.com", spoof)
        wait_for(lambda: any("proxied@example.com" in m.rcpt_tos for m in smtp_server.messages))
        [mail] = [m for m in smtp_server.messages if "proxied@example.com" in m.rcpt_tos]
        _confirm(proxied.base, link(mail.message, "confirm", proxied.base), spoof)
        assert _ip(tmp_path, "proxied@example.com") == "198.51.100.77"
    finally:
        assert proxied.stop() == 0
    assert "Traceback" not in direct.output + proxied.output


def test_sigterm_stops_cleanly_after_sending_queued_confirmations(tmp_path: Path) -> None:
    import asyncio
    import threading

    from aiosmtpd.smtp import SMTP, Envelope, Session
    from conftest import RecordingHandler, start_smtp

    gate = threading.Event()

    class Held(RecordingHandler):
        """A mail server that holds every DATA until the test opens the gate, so the
        confirmations are certainly still queued when SIGTERM arrives (no timing)."""

        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            await asyncio.get_running_loop().run_in_executor(None, gate.wait, 30)
            return await super().handle_DATA(server, session, envelope)

    smtp = start_smtp(Held())
    try:
        served = start_serve(tmp_path, smtp.url)
        for i in range(5):
            _subscribe(served.base, f"queued{i}@example.com")
        assert smtp.messages == []  # all five still queued (the first one held at DATA)
        served.proc.terminate()  # SIGTERM first, then let the mail server answer
        gate.set()
        assert served.stop() == 0, served.output
        sent = {r for m in smtp.messages for r in m.rcpt_tos}
        assert sent == {f"queued{i}@example.com" for i in range(5)}
        assert "Traceback" not in served.output
    finally:
        smtp.controller.stop()


def _post_subscribe(base: str, email: str) -> int:
    """One signup through the real form; the HTTP status (429 when throttled)."""
    opener = _browser()
    with opener.open(base + "/subscribe", timeout=10) as resp:
        token = csrf_from(resp.read().decode())
    body = urllib.parse.urlencode({"csrf_token": token, "email": email}).encode()
    try:
        with opener.open(urllib.request.Request(base + "/subscribe", data=body), timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_two_serve_processes_share_the_subscribe_throttle(
    tmp_path: Path, smtp_server: SMTPServer
) -> None:
    """Two processes behind one proxy: 5 signups per IP in all, not 5 each."""
    limit = {"NEWSLETTER_WEB_RATE_IP": "5/1h"}
    one = start_serve(tmp_path, smtp_server.url, **limit)
    two = start_serve(tmp_path, smtp_server.url, **limit)
    try:
        codes = [
            _post_subscribe((one, two)[i % 2].base, f"reader{i}@example.com") for i in range(8)
        ]
    finally:
        assert one.stop() == 0 and two.stop() == 0
    assert codes == [200] * 5 + [429] * 3, codes
    rows = query(folder_database_url(tmp_path, "served.db"), "SELECT count(*) FROM subscribers")
    assert rows == [(5,)]
