"""Hostile people against a real ``newsletter serve`` (waitress) and a real SMTP server.

Issue 16's findings 2 (names as a spam channel), 3 (Gmail dot variants), 4 (huge
bodies, idle connections), 8 (/healthz on a database that takes no writes) and 9
(a redirect echoing the Host header).  Raw sockets where the attack is about
bytes on the wire; a cookie-jar client where it is about forms.  No wall-clock
bounds: socket timeouts are generous safety nets, the assertions are on what came
back.
"""

from __future__ import annotations

import http.cookiejar
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy
from _web_support import Served, csrf_from, start_serve, text_part, wait_for
from conftest import Received, SMTPServer


@contextmanager
def served_db(served: Served) -> Iterator[_Rows]:
    """The served process's own database (SQLite file or PostgreSQL), for checks."""
    engine = sqlalchemy.create_engine(served.env["NEWSLETTER_DATABASE_URL"])
    try:
        with engine.begin() as conn:
            yield _Rows(conn)
    finally:
        engine.dispose()


class _Rows:
    def __init__(self, conn: sqlalchemy.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str) -> list[tuple[object, ...]]:
        result = self.conn.exec_driver_sql(sql)
        return [tuple(row) for row in result] if result.returns_rows else []


@pytest.fixture
def served(tmp_path: Path, smtp_server: SMTPServer) -> Iterator[Served]:
    running = start_serve(tmp_path, smtp_server.url, NEWSLETTER_WEB_RATE_IP="1000/1m")
    try:
        yield running
    finally:
        running.stop()


def post_form(base: str, email: str, name: str = "") -> int:
    """GET the form for its CSRF token and POST it, as a browser would; the status."""
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    with opener.open(base + "/subscribe", timeout=30) as resp:
        token = csrf_from(resp.read().decode())
    body = urllib.parse.urlencode({"csrf_token": token, "email": email, "name": name}).encode()
    try:
        with opener.open(urllib.request.Request(base + "/subscribe", data=body), timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def mails_until_marker(smtp: SMTPServer, base: str) -> list[Received]:
    """Every mail the app queued so far: a last signup's mail arrives after all of them
    (one mailer thread, first in first out)."""
    assert post_form(base, "marker@example.net") == 200
    wait_for(lambda: any("marker@example.net" in m.rcpt_tos for m in smtp.messages), 60)
    return [m for m in smtp.messages if "marker@example.net" not in m.rcpt_tos]


def raw(base: str, request: bytes, timeout: float = 30.0) -> bytes:
    """Send ``request`` as is and read the answer until the server closes or it is complete."""
    host, port = urllib.parse.urlsplit(base).hostname, urllib.parse.urlsplit(base).port
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            length = [
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ]
            if sep and length and len(body) >= length[0]:
                break
        return data


def test_a_name_cannot_make_the_confirmation_carry_a_message(
    served: Served, smtp_server: SMTPServer, tmp_path: Path
) -> None:
    """Finding 2: the name field put 200 characters of anyone's text into our email."""
    name = (
        "URGENT: your bank account is locked, log in at https://evil.example/login <x@evil.example>"
    )
    assert post_form(served.base, "victim@example.org", name) == 200
    (mail,) = mails_until_marker(smtp_server, served.base)
    message = mail.message
    [to] = message["To"].addresses
    assert (to.display_name, to.addr_spec) == ("", "victim@example.org")
    text = text_part(message)
    assert "URGENT" not in text and "evil.example" not in text
    assert "evil.example" not in mail.data.decode("ascii", "replace")
    with served_db(served) as conn:
        (stored,) = conn.execute("SELECT name FROM subscribers WHERE email = 'victim@example.org'")
    assert stored == ("URGENT your bank account is locked log in at",)


def test_gmail_dot_variants_share_one_limit(
    served: Served, smtp_server: SMTPServer, tmp_path: Path
) -> None:
    """Finding 3: nine dot spellings of one Gmail inbox got nine confirmation emails."""
    variants = [
        "jane.doe@gmail.com",
        "janedoe@gmail.com",
        "j.a.n.e.d.o.e@gmail.com",
        "Jane.Doe@Gmail.com",
        "jan.edoe@googlemail.com",
        "ja.nedoe@gmail.com",
        "j.anedoe+news@gmail.com",
        "janed.oe@gmail.com",
        "janedo.e@gmail.com",
    ]
    statuses = [post_form(served.base, address) for address in variants]
    assert statuses == [200, 200, 200] + [429] * 6  # NEWSLETTER_WEB_RATE_ADDRESS=3/1h
    assert len(mails_until_marker(smtp_server, served.base)) == 3
    with served_db(served) as conn:
        rows = conn.execute("SELECT email FROM subscribers")
        stored = sorted(row[0] for row in rows if str(row[0]).endswith("@gmail.com"))
    # Stored as typed (lower-cased by the validator's normal form), dots kept.
    assert stored == ["j.a.n.e.d.o.e@gmail.com", "jane.doe@gmail.com", "janedoe@gmail.com"]
    # Other mailboxes are not held back by it.
    assert post_form(served.base, "jane.doe@example.com") == 200


def test_a_10_mib_form_post_is_refused_from_its_headers(served: Served) -> None:
    """Finding 4: waitress spooled the whole body to disk before Flask's 413."""
    head = (
        "POST /subscribe HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {10 * 1024 * 1024}\r\n\r\n"
    ).encode()
    answer = raw(served.base, head)  # no body is ever sent: the answer must come anyway
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]


def test_idle_half_open_connections_do_not_starve_healthz(served: Served) -> None:
    """Finding 4: 101 idle half-open connections made /healthz time out."""
    host, port = "127.0.0.1", int(served.base.rsplit(":", 1)[1])
    idle = []
    try:
        for i in range(150):
            sock = socket.create_connection((host, port), timeout=30)
            if i % 2:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
            idle.append(sock)
        answer = raw(served.base, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"ok\n"), answer[:200]
    finally:
        for sock in idle:
            sock.close()


def test_no_redirect_echoes_the_host_header(served: Served) -> None:
    """Finding 9: //unsubscribe//abc with Host: evil.example got a 308 to evil.example."""
    paths = ("//unsubscribe//abc", "/unsubscribe//abc", "/archive//1", "//", "/archive/")
    for path in paths:
        answer = raw(
            served.base,
            f"GET {path} HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n".encode(),
        )
        status = answer.split(b"\r\n", 1)[0]
        assert not status.startswith(b"HTTP/1.1 3"), (path, answer[:300])
        assert b"evil.example" not in answer and b"\r\nlocation:" not in answer.lower()
        if path not in ("/archive/", "//"):  # the archive; "//" is "/" to waitress
            assert status.startswith(b"HTTP/1.1 404 "), (path, answer[:300])


@pytest.mark.sqlite_only  # a read-only SQLite file is the real "takes no writes" here
def test_healthz_is_503_and_says_why_when_the_database_takes_no_writes(
    tmp_path: Path, smtp_server: SMTPServer
) -> None:
    """Finding 8: /healthz said ok while every write failed."""
    first = start_serve(tmp_path, smtp_server.url)  # creates and migrates served.db
    assert first.stop() == 0
    db = tmp_path / "served.db"
    readonly = f"sqlite:///file:{db}?mode=ro&uri=true"  # a real read-only database
    second = start_serve_anyway(tmp_path, smtp_server.url, NEWSLETTER_DATABASE_URL=readonly)
    try:
        answer = raw(second.base, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    finally:
        second.stop()
    assert answer.startswith(b"HTTP/1.1 503 "), answer[:300]
    assert b"cannot write (attempt to write a readonly database)" in answer


def start_serve_anyway(tmp_path: Path, smtp_url: str, **env: str) -> Served:
    """``start_serve`` waits for a 200 from /healthz, which a read-only database never gives."""
    import subprocess
    import sys

    from _web_support import process_env
    from conftest import free_port

    port = free_port()
    values = process_env(tmp_path, smtp_url, port, **env)
    log = tmp_path / f"serve-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "newsletter", "serve", "--port", str(port)],
            env=values,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    running = Served(f"http://127.0.0.1:{port}", values, proc, log)

    def listening() -> bool:
        assert proc.poll() is None, running.output
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    wait_for(listening, 30)
    return running


def test_a_confirm_link_from_before_an_unsubscribe_stays_dead(
    served: Served, smtp_server: SMTPServer, tmp_path: Path
) -> None:
    """Finding 6: after an unsubscribe and a new signup, an old confirm link re-activated."""
    from _web_support import link

    from newsletter.subscribers import Tokens

    def status() -> str:
        with served_db(served) as conn:
            (row,) = conn.execute("SELECT status FROM subscribers WHERE email = 'back@example.org'")
        return str(row[0])

    def post(url: str) -> tuple[int, str]:
        request = urllib.request.Request(url, data=b"", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()

    assert post_form(served.base, "back@example.org") == 200
    (first,) = mails_until_marker(smtp_server, served.base)
    old_link = link(first.message, "confirm", served.base)
    assert post(old_link)[0] == 200 and status() == "active"
    with served_db(served) as conn:
        (sid,) = conn.execute("SELECT id FROM subscribers WHERE email = 'back@example.org'")
    unsubscribe = Tokens(served.env["NEWSLETTER_SECRET_KEY"]).unsubscribe(sid[0])
    assert post(f"{served.base}/unsubscribe/{unsubscribe}")[0] == 200
    assert status() == "unsubscribed"
    assert post_form(served.base, "back@example.org") == 200  # a new signup, not confirmed
    code, page = post(old_link)
    assert code == 410 and "this link has been replaced, check your newest email" in page
    assert status() == "unsubscribed"
    newest = [m for m in mails_until_marker(smtp_server, served.base) if m is not first]
    new_link = link(newest[-1].message, "confirm", served.base)
    assert new_link != old_link
    assert post(new_link)[0] == 200 and status() == "active"


def test_subscribe_takes_as_long_for_an_active_reader_as_for_a_stranger(
    tmp_path: Path, smtp_server: SMTPServer
) -> None:
    """Finding 5: about 5.7 ms for active addresses against 8.8 ms for the others.

    Interleaved requests (so load on the machine hits both alike) over one kept
    connection; the medians of the two kinds must be close.  The bound is loose
    (0.67-1.5) so a busy machine does not flake it; the old code's ratio was 0.65.
    """
    import http.client
    import statistics
    import time

    served = start_serve(
        tmp_path,
        smtp_server.url,
        NEWSLETTER_WEB_RATE_IP="100000/1m",
        NEWSLETTER_WEB_RATE_ADDRESS="100000/1m",
    )
    try:
        with served_db(served) as conn:
            conn.execute(
                "INSERT INTO subscribers (email, name, status, created_at, bounce_count, source)"
                " VALUES ('reader@example.org', '', 'active', '2026-01-01 00:00:00', 0, 'cli')"
            )
        port = int(served.base.rsplit(":", 1)[1])
        conn_http = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn_http.request("GET", "/subscribe")
        resp = conn_http.getresponse()
        token = csrf_from(resp.read().decode())
        cookie = resp.getheader("Set-Cookie", "").split(";", 1)[0]

        def post(email: str) -> float:
            body = urllib.parse.urlencode({"csrf_token": token, "email": email, "name": "x"})
            headers = {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}
            started = time.perf_counter()
            conn_http.request("POST", "/subscribe", body=body, headers=headers)
            answer = conn_http.getresponse()
            answer.read()
            elapsed = time.perf_counter() - started
            assert answer.status == 200
            return elapsed

        for i in range(10):  # warm up both paths (templates, connections)
            post("reader@example.org")
            post(f"warm{i}@example.net")
        active, unknown = [], []
        for i in range(60):
            active.append(post("reader@example.org"))
            unknown.append(post(f"stranger{i}@example.net"))
        ratio = statistics.median(active) / statistics.median(unknown)
        print(f"median active/unknown: {ratio:.2f}")
        assert 0.67 <= ratio <= 1.5, (ratio, statistics.median(active), statistics.median(unknown))
    finally:
        served.stop()


def test_every_page_refuses_to_be_framed(served: Served) -> None:
    """A mutation probe dropped X-Frame-Options with every test still passing."""
    for path in ("/", "/subscribe", "/archive", "/no-such-page", "/confirm/bad%20token"):
        answer = raw(
            served.base, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        head = answer.split(b"\r\n\r\n", 1)[0].decode().lower()
        assert "\r\nx-frame-options: deny" in head, (path, head)
        assert "frame-ancestors 'none'" in head, (path, head)
