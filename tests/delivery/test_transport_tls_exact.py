"""TLS, exactly: certificates checked on smtps:// too, the EHLO after STARTTLS, timeouts."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from conftest import RecordingHandler, free_port

from newsletter.config import Settings
from newsletter.delivery.transport import (
    Outcome,
    SendOutcome,
    SMTPConnection,
    SMTPPool,
    SMTPTarget,
)

FROM = "news@example.com"
MESSAGE = b"Subject: hi\r\n\r\nbody\r\n"


def _public_address() -> str | None:
    """This machine's own address on a non-loopback interface, if it has one."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.254", 9))  # no packet is sent: this only picks the route
        address: str = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") else address


PUBLIC = _public_address()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        message = "openssl is needed to make a test certificate (apt-get install openssl)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    names = "subjectAltName=IP:127.0.0.1,DNS:localhost" + (f",IP:{PUBLIC}" if PUBLIC else "")
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-addext", names),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def _context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


class Recording(RecordingHandler):
    """Records the EHLO names; with ``refuse_after_tls``, refuses the EHLO inside TLS."""

    def __init__(self, refuse_after_tls: bool = False) -> None:
        super().__init__()
        self.ehlos: list[tuple[str, bool]] = []
        self.refuse_after_tls = refuse_after_tls

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        encrypted = server.transport.get_extra_info("ssl_object") is not None
        self.ehlos.append((hostname, encrypted))
        if encrypted and self.refuse_after_tls:
            return ["550 5.7.1 not you again"]
        session.host_name = hostname
        return responses


def _login(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"u", b"pw")
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def start() -> Iterator[Callable[..., tuple[Controller, Recording]]]:
    started: list[Controller] = []

    def factory(
        handler: Recording, host: str = "127.0.0.1", **kwargs: Any
    ) -> tuple[Controller, Recording]:
        controller = Controller(handler, hostname=host, port=free_port(), **kwargs)
        controller.start()
        started.append(controller)
        return controller, handler

    yield factory
    for controller in started:
        controller.stop()


def test_smtps_checks_the_certificate(
    start: Callable[..., tuple[Controller, Recording]],
    make_settings: Callable[..., Settings],
    certificate: tuple[Path, Path],
) -> None:
    controller, handler = start(Recording(), ssl_context=_context(certificate))
    url = f"smtps://127.0.0.1:{controller.port}"
    untrusted = SMTPPool(make_settings(), url)
    out = untrusted.send(FROM, "a@example.org", MESSAGE)
    untrusted.close()
    assert (out.outcome, out.code, out.relay, out.relay_fault) == (
        Outcome.POLICY,
        None,
        f"smtps://127.0.0.1:{controller.port}",
        True,
    )
    assert out.response.startswith(
        "TLS certificate of 127.0.0.1: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
    )
    settings = make_settings(NEWSLETTER_SMTP_CA_FILE=str(certificate[0]))
    conn = SMTPConnection(SMTPTarget.parse(url), settings)
    try:
        assert conn.smtp.sock is not None and conn.smtp.sock.gettimeout() == 30.0
        assert conn.send(FROM, "a@example.org", MESSAGE).outcome is Outcome.SENT
    finally:
        conn.close()
    assert handler.ehlos == [(socket.gethostname(), True)]
    assert [m.rcpt_tos for m in handler.messages] == [["a@example.org"]]


def test_starttls_then_ehlo_again_inside_tls(
    start: Callable[..., tuple[Controller, Recording]],
    make_settings: Callable[..., Settings],
    certificate: tuple[Path, Path],
) -> None:
    controller, handler = start(Recording(), tls_context=_context(certificate))
    pool = SMTPPool(
        make_settings(NEWSLETTER_SMTP_CA_FILE=str(certificate[0])),
        f"smtp://127.0.0.1:{controller.port}",
    )
    assert pool.send(FROM, "a@example.org", MESSAGE).outcome is Outcome.SENT
    pool.close()
    name = socket.gethostname()
    assert handler.ehlos == [(name, False), (name, True)]


def test_a_refused_ehlo_inside_tls_is_the_relays_fault(
    start: Callable[..., tuple[Controller, Recording]],
    make_settings: Callable[..., Settings],
    certificate: tuple[Path, Path],
) -> None:
    controller, handler = start(Recording(refuse_after_tls=True), tls_context=_context(certificate))
    url = f"smtp://127.0.0.1:{controller.port}"
    pool = SMTPPool(make_settings(NEWSLETTER_SMTP_CA_FILE=str(certificate[0])), url)
    out = pool.send(FROM, "a@example.org", MESSAGE)
    pool.close()
    assert out == SendOutcome(
        Outcome.POLICY, 550, "EHLO: 5.7.1 not you again", relay=url, relay_fault=True
    )
    assert handler.messages == []


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_starttls_protects_the_password_to_another_host(
    start: Callable[..., tuple[Controller, Recording]],
    make_settings: Callable[..., Settings],
    certificate: tuple[Path, Path],
) -> None:
    if PUBLIC is None:
        pytest.skip("no non-loopback interface to listen on")
    controller, handler = start(
        Recording(),
        host=PUBLIC,
        tls_context=_context(certificate),
        authenticator=_login,
        auth_required=True,
    )
    url = f"smtp://u:pw@{PUBLIC}:{controller.port}"
    pool = SMTPPool(make_settings(NEWSLETTER_SMTP_CA_FILE=str(certificate[0])), url)
    out = pool.send(FROM, "a@example.org", MESSAGE)
    pool.close()
    assert (out.outcome, out.relay_fault) == (Outcome.SENT, False)
    assert [m.rcpt_tos for m in handler.messages] == [["a@example.org"]]


def test_a_tls_handshake_that_never_comes_times_out(
    make_settings: Callable[..., Settings],
) -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # accepts TCP, never speaks TLS
    port = listener.getsockname()[1]

    def mute() -> None:
        conn, _ = listener.accept()
        conn.settimeout(3.0)  # a client without a timeout gets EOF here, not a hang
        try:
            while conn.recv(4096):
                pass
        except OSError:
            pass
        conn.close()

    thread = threading.Thread(target=mute, daemon=True)
    thread.start()
    try:
        pool = SMTPPool(make_settings(NEWSLETTER_SMTP_TIMEOUT="0.3"), f"smtps://127.0.0.1:{port}")
        out = pool.send(FROM, "a@example.org", MESSAGE)
        pool.close()
    finally:
        thread.join(5)
        listener.close()
    assert out == SendOutcome(
        Outcome.RETRY,
        None,
        "timed out waiting for the server",
        relay=f"smtps://127.0.0.1:{port}",
        relay_fault=True,
    )
