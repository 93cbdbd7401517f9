"""Transports against a real aiosmtpd server: TLS, auth, pooling, faults, Maildir."""

from __future__ import annotations

import email
import email.policy
import os
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _delivery_support import FROM, sample
from aiosmtpd.smtp import AuthResult, LoginPassword
from conftest import RecordingHandler, SMTPServer

from newsletter.config import Settings
from newsletter.delivery.outbox import MaildirOutbox
from newsletter.delivery.ratelimit import TokenBucket
from newsletter.delivery.transport import (
    Outcome,
    SMTPPool,
    SMTPTarget,
    classify,
    open_transport,
)


class Pipelining(RecordingHandler):
    """Advertises PIPELINING (aiosmtpd reads commands in order anyway) and counts EHLOs."""

    ehlos = 0

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        type(self).ehlos += 1
        return [*responses[:-1], "250-PIPELINING", responses[-1]]


@pytest.mark.parametrize(
    ("code", "text", "stage", "expected"),
    [
        (250, "2.0.0 ok", "data", Outcome.SENT),
        (421, "4.3.2 shutting down", "data", Outcome.RETRY),
        (451, "4.7.1 greylisted", "rcpt", Outcome.RETRY),
        (452, "insufficient storage", "rcpt", Outcome.RETRY),
        (550, "5.1.1 no such user", "rcpt", Outcome.BOUNCE),
        (552, "5.2.2 mailbox full", "data", Outcome.BOUNCE),
        (550, "5.7.1 relaying denied", "rcpt", Outcome.POLICY),
        (554, "5.7.1 rejected by policy", "data", Outcome.POLICY),
        (535, "authentication failed", "auth", Outcome.POLICY),
        (550, "no such user here", "rcpt", Outcome.BOUNCE),
        (554, "transaction failed", "data", Outcome.FAILED),
        (552, "5.3.4 message too big", "data", Outcome.FAILED),
        (554, "no SMTP service here", "session", Outcome.POLICY),
        (553, "5.1.8 sender address domain not found", "mail", Outcome.POLICY),
        (421, "too many connections", "session", Outcome.RETRY),
        # Without an enhanced code, 550/551/553 mean "no such mailbox" only at RCPT:
        (550, "mailbox unavailable", "data", Outcome.FAILED),
        (551, "user not local", "data", Outcome.FAILED),
        (553, "mailbox name not allowed", "data", Outcome.FAILED),
        (551, "user not local", "rcpt", Outcome.BOUNCE),
        (553, "mailbox name not allowed", "rcpt", Outcome.BOUNCE),
        # 500 is a permanent error (syntax), not a "try again": 499 is the last retry.
        (500, "syntax error", "data", Outcome.FAILED),
        (500, "5.5.2 syntax error", "rcpt", Outcome.FAILED),
        (499, "odd", "data", Outcome.RETRY),
    ],
)
def test_classify(code: int, text: str, stage: str, expected: Outcome) -> None:
    assert classify(code, text, stage) is expected


def test_smtp_url_credentials_are_percent_decoded() -> None:
    t = SMTPTarget.parse("smtp://us%40er:p%40ss%3Aw%2Frd@mail.example.com:2525")
    assert (t.username, t.password, t.host, t.port) == (
        "us@er",
        "p@ss:w/rd",
        "mail.example.com",
        2525,
    )
    assert "p@ss" not in str(t)
    assert SMTPTarget.parse("smtps://mail.example.com").port == 465
    assert SMTPTarget.parse("smtp://mail.example.com").port == 587


def test_pool_reuses_connections_and_dot_stuffs(
    servers: Callable[..., SMTPServer], make_settings: Callable[..., Settings]
) -> None:
    Pipelining.ehlos = 0
    server = servers(Pipelining())
    pool = SMTPPool(make_settings(NEWSLETTER_SMTP_CONNECTIONS="2"), server.url)
    body = ".leading dot\r\n..two dots\r\nend"
    try:
        for i in range(5):
            out = pool.send(FROM, f"r{i}@example.org", sample(f"r{i}@example.org", body))
            assert out.outcome is Outcome.SENT, out
            assert out.code == 250
    finally:
        pool.close()
    assert Pipelining.ehlos == 1  # one connection for five sequential messages
    assert [m.rcpt_tos for m in server.messages] == [[f"r{i}@example.org"] for i in range(5)]
    msg = email.message_from_bytes(server.messages[0].data, policy=email.policy.default)
    assert msg.get_content().splitlines() == [".leading dot", "..two dots", "end"]


def test_plain_session_without_pipelining(
    smtp_server: SMTPServer, make_settings: Callable[..., Settings]
) -> None:
    pool = open_transport(make_settings(NEWSLETTER_SMTP_URL=smtp_server.url))
    assert isinstance(pool, SMTPPool)
    try:
        assert pool.send(FROM, "a@example.org", sample()).outcome is Outcome.SENT
        assert pool.send(FROM, "b@example.org", sample()).outcome is Outcome.SENT
    finally:
        pool.close()
    assert [m.rcpt_tos[0] for m in smtp_server.messages] == ["a@example.org", "b@example.org"]
    assert smtp_server.messages[0].envelope_from == FROM


class Faulty(RecordingHandler):
    """550 5.1.1 for 'gone@', 451 once for 'grey@', 421 (and hang up) on the 2nd DATA."""

    def __init__(self) -> None:
        super().__init__()
        self.datas = 0
        self.greylisted: set[str] = set()

    def rcpt_reply(self, address: str) -> str:
        if address.startswith("gone@"):
            return "550 5.1.1 <gone@example.org>: Recipient address rejected: User unknown"
        if address.startswith("grey@") and address not in self.greylisted:
            self.greylisted.add(address)
            return "451 4.7.1 Greylisted, try again later"
        if address.startswith("spam@"):
            return "554 5.7.1 Service unavailable; client host blocked"
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.datas += 1
        if self.datas == 2:
            server.transport.close()
            return "421 4.4.2 closing connection"
        return await super().handle_DATA(server, session, envelope)


class FaultyPipelining(Faulty, Pipelining):
    pass


@pytest.mark.parametrize("pipelining", [True, False])
def test_fault_replies_are_classified_and_session_recovers(
    servers: Callable[..., SMTPServer], make_settings: Callable[..., Settings], pipelining: bool
) -> None:
    handler = FaultyPipelining() if pipelining else Faulty()
    server = servers(handler)
    pool = SMTPPool(make_settings(), server.url)
    try:
        seen = [
            pool.send(FROM, rcpt, sample(rcpt))
            for rcpt in (
                "ok1@example.org",
                "gone@example.org",
                "ok2@example.org",  # DATA #2: 421 and the connection drops
                "grey@example.org",
                "grey@example.org",
                "spam@example.org",
                "ok3@example.org",
            )
        ]
    finally:
        pool.close()
    kinds = [o.outcome for o in seen]
    assert kinds == [
        Outcome.SENT,
        Outcome.BOUNCE,
        Outcome.RETRY,
        Outcome.RETRY,
        Outcome.SENT,
        Outcome.POLICY,
        Outcome.SENT,
    ]
    assert seen[1].code == 550 and "User unknown" in seen[1].response
    assert seen[5].text.startswith("554 5.7.1")
    got = sorted(r for m in server.messages for r in m.rcpt_tos)
    assert got == ["grey@example.org", "ok1@example.org", "ok3@example.org"]


def test_stalled_server_hits_the_timeout(make_settings: Callable[..., Settings]) -> None:
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        pool = SMTPPool(
            make_settings(NEWSLETTER_SMTP_TIMEOUT="0.5"), f"smtp://127.0.0.1:{port}"
        )  # accepts the TCP connection, never says hello
        started = time.monotonic()
        out = pool.send(FROM, "a@example.org", sample())
        assert out.outcome is Outcome.RETRY and "timed out" in out.response
        assert time.monotonic() - started < 3
        pool.close()
    finally:
        listener.close()


def test_unreachable_server_is_a_retry(make_settings: Callable[..., Settings]) -> None:
    from conftest import free_port

    pool = SMTPPool(make_settings(), f"smtp://127.0.0.1:{free_port()}")
    out = pool.send(FROM, "a@example.org", sample())
    assert out.outcome is Outcome.RETRY and out.code is None
    pool.close()


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        b"us@er",
        b"p@ss:w/rd",
    )
    return AuthResult(success=ok, handled=False)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_login_with_percent_encoded_credentials(
    servers: Callable[..., SMTPServer], make_settings: Callable[..., Settings]
) -> None:
    server = servers(authenticator=_authenticator, auth_require_tls=False, auth_required=True)
    host = f"127.0.0.1:{server.controller.port}"
    good = SMTPPool(make_settings(), f"smtp://us%40er:p%40ss%3Aw%2Frd@{host}")
    assert good.send(FROM, "a@example.org", sample()).outcome is Outcome.SENT
    good.close()
    bad = SMTPPool(make_settings(), f"smtp://us%40er:wrong@{host}")
    out = bad.send(FROM, "a@example.org", sample())
    bad.close()
    assert out.outcome is Outcome.POLICY and out.code == 535
    assert len(server.messages) == 1


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        message = "openssl is needed to make a test certificate (apt-get install openssl)"
        if os.environ.get("CI"):  # CI must run the TLS tests: .ci/run installs openssl
            pytest.fail(message)
        pytest.skip(message)
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def _server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


class TLSCheck(RecordingHandler):
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if server.transport.get_extra_info("ssl_object") is None:
            return "554 5.7.0 TLS required"
        return await super().handle_DATA(server, session, envelope)


def test_starttls_is_used_and_certificates_verified(
    servers: Callable[..., SMTPServer],
    make_settings: Callable[..., Settings],
    certificate: tuple[Path, Path],
) -> None:
    server = servers(
        TLSCheck(),
        tls_context=_server_context(certificate),
        require_starttls=True,
        authenticator=_authenticator,
    )
    url = f"smtp://us%40er:p%40ss%3Aw%2Frd@127.0.0.1:{server.controller.port}"
    trusted = SMTPPool(make_settings(NEWSLETTER_SMTP_CA_FILE=str(certificate[0])), url)
    assert trusted.send(FROM, "a@example.org", sample()).outcome is Outcome.SENT
    trusted.close()
    untrusted = SMTPPool(make_settings(), url)  # self-signed: must be refused
    out = untrusted.send(FROM, "b@example.org", sample())
    untrusted.close()
    assert out.outcome is Outcome.POLICY and "certificate" in out.response.lower()
    assert [m.rcpt_tos for m in server.messages] == [["a@example.org"]]


def test_implicit_tls(
    servers: Callable[..., SMTPServer],
    make_settings: Callable[..., Settings],
    certificate: tuple[Path, Path],
) -> None:
    server = servers(TLSCheck(), ssl_context=_server_context(certificate))
    pool = SMTPPool(
        make_settings(NEWSLETTER_SMTP_CA_FILE=str(certificate[0])),
        f"smtps://127.0.0.1:{server.controller.port}",
    )
    assert pool.send(FROM, "a@example.org", sample()).outcome is Outcome.SENT
    pool.close()
    assert len(server.messages) == 1


def test_maildir_outbox_writes_one_standard_file_per_message(tmp_path: Path) -> None:
    box = MaildirOutbox(tmp_path / "outbox")
    threads = [
        threading.Thread(
            target=lambda i=i: box.send(FROM, f"r{i}@example.org", sample(f"r{i}@example.org"))
        )
        for i in range(20)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    files = sorted((tmp_path / "outbox" / "new").iterdir())
    assert len(files) == 20
    raw = files[0].read_bytes()
    assert b"\r\n" not in raw  # Maildir files use the local line ending
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Return-Path"] == f"<{FROM}>"
    assert msg["Delivered-To"] == msg["To"]
    assert msg.get_content().strip() == "Hello"


def test_token_bucket_keeps_the_rate() -> None:
    bucket = TokenBucket(200)
    done: list[float] = []

    def work() -> None:
        for _ in range(50):
            bucket.acquire()
            done.append(time.monotonic())

    started = time.monotonic()
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    assert len(done) == 200
    # 200 tokens at 200/s, one token of initial credit.  Only bounds a slow machine
    # cannot break: at least 0.9 s in all, and no more tokens early than the rate allows.
    assert elapsed >= 0.9
    assert sum(t - started < 0.5 for t in done) <= 0.5 * 200 + 2
    cancelled = threading.Event()
    slow = TokenBucket(0.5)
    slow.reserve()
    cancelled.set()
    assert slow.acquire(cancelled) is False


def test_token_bucket_uses_its_clock() -> None:
    now = [0.0]
    slept: list[float] = []
    bucket = TokenBucket(10, clock=lambda: now[0], sleep=slept.append)
    for _ in range(3):
        bucket.acquire()
    assert slept == pytest.approx([0.1, 0.2])
    now[0] = 10.0  # long idle: credit is capped at the burst (one token here)
    waits = [bucket.reserve() for _ in range(3)]
    assert waits[0] == 0 and waits[-1] > 0


def test_refusal_at_the_greeting_is_a_policy_problem(
    make_settings: Callable[..., Settings],
) -> None:
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def refuse() -> None:
        conn, _ = listener.accept()
        conn.sendall(b"554 5.7.1 mail.example.net: your IP is on our blocklist\r\n")
        conn.close()

    thread = threading.Thread(target=refuse)
    thread.start()
    pool = SMTPPool(make_settings(), f"smtp://127.0.0.1:{listener.getsockname()[1]}")
    out = pool.send(FROM, "a@example.org", sample())
    pool.close()
    thread.join()
    listener.close()
    assert out.outcome is Outcome.POLICY and out.code == 554
    assert "blocklist" in out.response
