"""The SMTP conversation, line by line, against a scripted server on a real socket.

``Scripted`` is a small SMTP server that answers from a script (so it can say what no
well-behaved server says: a 252 to RCPT, a 354 after a refused RCPT, a 421 to RSET) and
records every line the client sends, per connection.
"""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from newsletter.config import Settings
from newsletter.delivery.transport import (
    Outcome,
    RelayPool,
    SendOutcome,
    SMTPConnection,
    SMTPPool,
    SMTPTarget,
)

FROM = "news@example.com"
MESSAGE = b"Subject: hi\r\n\r\n.dot\r\nbody\r\n"
STUFFED = "Subject: hi\r\n\r\n..dot\r\nbody\r\n"  # what the server reads before the final "."
HANGUP = "HANGUP"  # a reply that closes the connection instead
SILENT = "SILENT"  # a reply never sent (the client waits for it)


class Scripted:
    """Answers each verb from a list of replies (the last one repeats); records all lines."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        greeting: str = "220 mx.example.net ESMTP",
        extensions: tuple[str, ...] = (),
        **replies: str | list[str],
    ) -> None:
        self.sock = socket.create_server((host, 0))
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.greeting = greeting
        self.extensions = extensions
        self.replies: dict[str, list[str]] = {
            "EHLO": [],
            "MAIL": ["250 2.1.0 Ok"],
            "RCPT": ["250 2.1.5 Ok"],
            "DATA": ["354 End data with <CR><LF>.<CR><LF>"],
            ".": ["250 2.0.0 Ok: queued as 4F2B"],
            "RSET": ["250 2.0.0 Ok"],
            "QUIT": ["221 2.0.0 Bye"],
            "AUTH": ["235 2.7.0 Authentication successful"],
            "*": ["235 2.7.0 Authentication successful"],  # a line after a 334
        }
        for verb, reply in replies.items():
            self.replies[verb] = [reply] if isinstance(reply, str) else list(reply)
        self.sessions: list[list[str]] = []
        self.hooks: dict[str, Callable[[], None]] = {}  # run before answering that verb
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def url(self, userinfo: str = "") -> str:
        return f"smtp://{userinfo}{self.host}:{self.port}"

    def _reply(self, verb: str) -> str:
        script = self.replies[verb]
        return script.pop(0) if len(script) > 1 else script[0]

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            lines: list[str] = []
            self.sessions.append(lines)
            thread = threading.Thread(target=self._session, args=(conn, lines), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _session(self, conn: socket.socket, lines: list[str]) -> None:
        conn.settimeout(3.0)  # a client stuck waiting (a broken mutant) gets EOF, not a hang
        try:
            self._converse(conn, lines)
        except OSError:
            pass  # the client hung up first
        finally:
            conn.close()

    def _converse(self, conn: socket.socket, lines: list[str]) -> None:
        with conn.makefile("rb") as reader:
            if self.greeting == SILENT:
                reader.readline()  # never says hello; hangs up after the 3 s above
                return
            conn.sendall(f"{self.greeting}\r\n".encode())
            if not self.greeting.startswith("220"):
                return
            after_334 = False
            while raw := reader.readline():
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                lines.append(line)
                verb = "*" if after_334 else line.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    reply = self._ehlo()
                elif verb in self.replies:
                    reply = self._reply(verb)
                else:
                    reply = "500 5.5.2 Error: command not recognized"
                if verb == "DATA" and reply.startswith("354"):
                    conn.sendall(f"{reply}\r\n".encode())
                    data = b""
                    while (chunk := reader.readline()) != b".\r\n":
                        if not chunk:
                            return  # hung up in the middle of the message
                        data += chunk
                    lines.append(data.decode("utf-8", "replace"))
                    lines.append(".")
                    verb = "."
                    reply = self._reply(".")
                if verb in self.hooks:
                    self.hooks[verb]()
                if reply == HANGUP:
                    return
                if reply != SILENT:
                    conn.sendall(f"{reply}\r\n".encode())
                after_334 = reply.startswith("334")
                if verb == "QUIT" and reply != SILENT:
                    return

    def _ehlo(self) -> str:
        if self.replies["EHLO"]:
            return self._reply("EHLO")
        names = ["mx.example.net", *self.extensions]
        return "\r\n".join(
            f"250{'-' if i < len(names) - 1 else ' '}{name}" for i, name in enumerate(names)
        )

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        self.sock.close()
        self._accept.join(5)
        for thread in self._threads:
            thread.join(5)


@pytest.fixture
def scripted() -> Iterator[Callable[..., Scripted]]:
    started: list[Scripted] = []

    def start(**kwargs: Any) -> Scripted:
        server = Scripted(**kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def fast(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(NEWSLETTER_SMTP_TIMEOUT="2")


EHLO = f"ehlo {socket.gethostname()}"  # as smtplib writes it
QUIT = "quit"


def _transaction(rcpt: str = "a@example.org", sender: str = FROM) -> list[str]:
    return [f"MAIL FROM:<{sender}>", f"RCPT TO:<{rcpt}>", "DATA", STUFFED, "."]


def _sent(server: Scripted, opening: bool = False) -> SendOutcome:
    return SendOutcome(
        Outcome.SENT, 250, "2.0.0 Ok: queued as 4F2B", relay=server.url(), relay_fault=opening
    )


@pytest.mark.parametrize("extensions", [(), ("PIPELINING",), ("PIPELINING", "SMTPUTF8")])
def test_one_connection_carries_message_after_message(
    scripted: Callable[..., Scripted], fast: Settings, extensions: tuple[str, ...]
) -> None:
    server = scripted(extensions=extensions)
    pool = SMTPPool(fast, server.url())
    assert pool.send(FROM, "a@example.org", MESSAGE) == _sent(server)
    assert pool.send(FROM, "b@example.org", MESSAGE) == _sent(server)
    pool.close()
    assert server.sessions == [
        [EHLO, *_transaction("a@example.org"), *_transaction("b@example.org"), QUIT]
    ]


def test_the_connection_says_what_the_server_offers(
    scripted: Callable[..., Scripted], fast: Settings
) -> None:
    plain = scripted()
    both = scripted(extensions=("PIPELINING", "SMTPUTF8"))
    first = SMTPConnection(SMTPTarget.parse(plain.url()), fast)
    second = SMTPConnection(SMTPTarget.parse(both.url()), fast)
    try:
        assert (first.pipelining, first.smtputf8, first.dirty, first.timeout) == (
            False,
            False,
            False,
            2.0,
        )
        assert (second.pipelining, second.smtputf8, second.dirty) == (True, True, False)
        assert first.smtp.sock is not None and first.smtp.sock.gettimeout() == 2.0
        first.send(FROM, "a@example.org", MESSAGE)
        assert first.smtp.sock.gettimeout() == 2.0  # back from the long wait for DATA's end
        assert first.dirty is False
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize(
    ("envelope_from", "recipient"),
    [
        (FROM, "a@example.org\r\nRCPT TO:<b@example.org>"),
        (FROM, "a@example.org\n"),
        (FROM, "a@example.org\r"),
        ("news@example.com\r\nRSET", "a@example.org"),
        ("news@example.com\n", "a@example.org"),
    ],
)
def test_control_characters_never_reach_the_server(
    scripted: Callable[..., Scripted], fast: Settings, envelope_from: str, recipient: str
) -> None:
    server = scripted(extensions=("PIPELINING",))
    pool = SMTPPool(fast, server.url())
    out = pool.send(envelope_from, recipient, MESSAGE)
    assert out == SendOutcome(
        Outcome.FAILED, None, "control characters in an address", relay=server.url()
    )
    assert pool.send(FROM, "a@example.org", MESSAGE) == _sent(server)  # still in step
    pool.close()
    assert server.sessions == [[EHLO, *_transaction(), QUIT]]


@pytest.mark.parametrize(
    ("envelope_from", "recipient"),
    [(FROM, "r\u00e9ader@example.org"), ("n\u00e9ws@example.com", "a@example.org")],
)
def test_non_ascii_addresses_need_smtputf8(
    scripted: Callable[..., Scripted], fast: Settings, envelope_from: str, recipient: str
) -> None:
    without = scripted()
    pool = SMTPPool(fast, without.url())
    assert pool.send(envelope_from, recipient, MESSAGE) == SendOutcome(
        Outcome.FAILED, None, "the server does not accept non-ASCII addresses", relay=without.url()
    )
    pool.close()
    assert without.sessions == [[EHLO, QUIT]]
    with_it = scripted(extensions=("SMTPUTF8",))
    pool = SMTPPool(fast, with_it.url())
    assert pool.send(envelope_from, recipient, MESSAGE) == _sent(with_it)
    pool.close()
    assert with_it.sessions == [
        [
            EHLO,
            f"MAIL FROM:<{envelope_from}> SMTPUTF8",
            f"RCPT TO:<{recipient}>",
            "DATA",
            STUFFED,
            ".",
            QUIT,
        ]
    ]


def test_a_refused_mail_from_stops_there_and_the_next_transaction_resets(
    scripted: Callable[..., Scripted], fast: Settings
) -> None:
    server = scripted(MAIL=["550 5.7.1 sender blocked", "250 2.1.0 Ok"])
    pool = SMTPPool(fast, server.url())
    assert pool.send(FROM, "a@example.org", MESSAGE) == SendOutcome(
        Outcome.POLICY, 550, "5.7.1 sender blocked", relay=server.url()
    )
    assert pool.send(FROM, "b@example.org", MESSAGE) == _sent(server)
    assert pool.send(FROM, "c@example.org", MESSAGE) == _sent(server)
    pool.close()
    assert server.sessions == [
        [
            EHLO,
            f"MAIL FROM:<{FROM}>",
            "RSET",
            *_transaction("b@example.org"),
            *_transaction("c@example.org"),
            QUIT,
        ]
    ]


@pytest.mark.parametrize("extensions", [(), ("PIPELINING",)])
@pytest.mark.parametrize(
    ("verb", "reply", "outcome"),
    [
        ("MAIL", "553 5.1.8 sender address domain not found", Outcome.POLICY),  # not a bounce
        ("RCPT", "550 mailbox unavailable", Outcome.BOUNCE),  # no 5.x.y: a mailbox, at RCPT
        ("RCPT", "553 5.1.3 bad address syntax", Outcome.BOUNCE),
    ],
)
def test_a_refusal_is_classified_at_its_own_stage(
    scripted: Callable[..., Scripted],
    fast: Settings,
    extensions: tuple[str, ...],
    verb: str,
    reply: str,
    outcome: Outcome,
) -> None:
    server = scripted(extensions=extensions, **{verb: reply}, DATA="554 5.5.1 no recipients")
    pool = SMTPPool(fast, server.url())
    assert pool.send(FROM, "a@example.org", MESSAGE) == SendOutcome(
        outcome, int(reply[:3]), reply[4:], relay=server.url()
    )
    pool.close()


def test_a_refused_rcpt_is_the_answer_not_the_refused_data_after_it(
    scripted: Callable[..., Scripted], fast: Settings
) -> None:
    server = scripted(
        extensions=("PIPELINING",),
        RCPT=["550 5.1.1 <gone@example.org>: User unknown", "250 2.1.5 Ok"],
        DATA=["554 5.5.1 Error: no valid recipients", "354 go ahead"],
    )
    pool = SMTPPool(fast, server.url())
    assert pool.send(FROM, "gone@example.org", MESSAGE) == SendOutcome(
        Outcome.BOUNCE, 550, "5.1.1 <gone@example.org>: User unknown", relay=server.url()
    )
    assert pool.send(FROM, "a@example.org", MESSAGE) == _sent(server)
    pool.close()
    assert server.sessions == [
        [
            EHLO,
            f"MAIL FROM:<{FROM}>",
            "RCPT TO:<gone@example.org>",
            "DATA",
            "RSET",
            *_transaction(),
            QUIT,
        ]
    ]


def test_data_accepted_after_a_refused_rcpt_is_ended_empty(
    scripted: Callable[..., Scripted], fast: Settings
) -> None:
    server = scripted(
        extensions=("PIPELINING",),
        RCPT=["550 5.1.1 User unknown", "250 2.1.5 Ok"],
        **{".": ["554 5.5.1 no valid recipients", "250 2.0.0 Ok: queued as 4F2B"]},
    )
    pool = SMTPPool(fast, server.url())
    assert pool.send(FROM, "gone@example.org", MESSAGE) == SendOutcome(
        Outcome.BOUNCE, 550, "5.1.1 User unknown", relay=server.url()
    )
    assert pool.send(FROM, "a@example.org", MESSAGE) == _sent(server)
    pool.close()
    assert server.sessions == [
        [
            EHLO,
            f"MAIL FROM:<{FROM}>",
            "RCPT TO:<gone@example.org>",
            "DATA",
            "",
            ".",
            "RSET",
            *_transaction(),
            QUIT,
        ]
    ]


def test_a_refused_data_command_is_classified_at_data(
    scripted: Callable[..., Scripted], fast: Settings
) -> None:
    server = scripted(DATA="550 mailbox unavailable")
    pool = SMTPPool(fast, server.url())
    assert pool.send(FROM, "a@example.org", MESSAGE) == SendOutcome(
        Outcome.FAILED, 550, "mailbox unavailable", relay=server.url()
    )
    pool.close()
    assert server.sessions == [
        [EHLO, f"MAIL FROM:<{FROM}>", "RCPT TO:<a@example.org>", "DATA", QUIT]
    ]


def test_a_4xx_to_rcpt_keeps_the_connection(
    scripted: Callable[..., Scripted], fast: Settings
) -> None:
    server = scripted(RCPT=["400 4.0.0 try later", "250 2.1.5 Ok"])
    pool = SMTPPool(fast, server.url())
    assert pool.send(FROM, "a@example.org", MESSAGE) == SendOutcome(
        Outcome.RETRY, 400, "4.0.0 try later", relay=server.url()
    )
    assert pool.send(FROM, "a@example.org", MESSAGE) == _sent(server)
    pool.close()
    assert server.sessions == [
        [EHLO, f"MAIL FROM:<{FROM}>", "RCPT TO:<a@example.org>", "RSET", *_transaction(), QUIT]
    ]


@pytest.mark.parametrize("extensions", [(), ("PIPELINING",)])
def test_a_2xx_or_3xx_out_of_step_hangs_up_and_retries(
    scripted: Callable[..., Scripted], fast: Settings, extensions: tuple[str, ...]
) -> None:
    server = scripted(extensions=extensions, RCPT=["252 2.1.5 Cannot VRFY", "250 2.1.5 Ok"])
    pool = SMTPPool(fast, server.url())
    assert pool.send(FROM, "a@example.org", MESSAGE) == SendOutcome(
        Outcome.RETRY, 252, "2.1.5 Cannot VRFY", relay=server.url()
    )
    assert pool.send(FROM, "a@example.org", MESSAGE) == _sent(server)
    pool.close()
    first = [EHLO, f"MAIL FROM:<{FROM}>", "RCPT TO:<a@example.org>"]
    if extensions:
        first.append("DATA")
    assert server.sessions == [first, [EHLO, *_transaction(), QUIT]]


@pytest.mark.parametrize(
    ("verb", "reply", "kind"),
    [
        ("MAIL", "421 4.3.2 Service shutting down", Outcome.RETRY),
        ("RCPT", "421 4.7.0 Daily sending quota exceeded", Outcome.QUOTA),
        ("DATA", "421 4.3.2 bye", Outcome.RETRY),
        (".", "421 4.3.2 bye", Outcome.RETRY),
        (".", "421 4.7.0 daily sending limit reached", Outcome.QUOTA),
    ],
)
def test_a_421_anywhere_closes_the_connection(
    scripted: Callable[..., Scripted], fast: Settings, verb: str, reply: str, kind: Outcome
) -> None:
    default = {"MAIL": "250 2.1.0 Ok", "RCPT": "250 2.1.5 Ok", "DATA": "354 go ahead"}
    default["."] = "250 2.0.0 Ok: queued as 4F2B"
    server = scripted(**{verb: [reply, default[verb]]})
    pool = SMTPPool(fast, server.url())
    assert pool.send(FROM, "a@example.org", MESSAGE) == SendOutcome(
        kind, 421, reply[4:], relay=server.url()
    )
    assert pool.send(FROM, "a@example.org", MESSAGE) == _sent(server)
    pool.close()
    upto = {"MAIL": 1, "RCPT": 2, "DATA": 3, ".": 5}[verb]
    assert server.sessions == [
        [EHLO, *_transaction()[:upto], QUIT],  # the client closes it politely
        [EHLO, *_transaction(), QUIT],
    ]


@pytest.mark.parametrize(
    ("reply", "outcome", "code", "text"),
    [
        ("502 5.5.1 RSET not allowed", Outcome.POLICY, 502, "RSET: 5.5.1 RSET not allowed"),
        ("300 odd", Outcome.RETRY, 300, "RSET: odd"),
        (
            "421 4.7.0 daily sending quota exceeded",
            Outcome.RETRY,
            421,
            "RSET: 4.7.0 daily sending quota exceeded",
        ),
    ],
)
def test_a_refused_rset_ends_the_connection(
    scripted: Callable[..., Scripted],
    fast: Settings,
    reply: str,
    outcome: Outcome,
    code: int,
    text: str,
) -> None:
    server = scripted(MAIL=["451 4.3.0 later", "250 2.1.0 Ok"], RSET=[reply, "250 2.0.0 Ok"])
    pool = SMTPPool(fast, server.url())
    assert pool.send(FROM, "a@example.org", MESSAGE).code == 451
    assert pool.send(FROM, "a@example.org", MESSAGE) == SendOutcome(
        outcome, code, text, relay=server.url()
    )
    assert pool.send(FROM, "a@example.org", MESSAGE) == _sent(server)
    pool.close()
    assert server.sessions == [
        [EHLO, f"MAIL FROM:<{FROM}>", "RSET", QUIT],
        [EHLO, *_transaction(), QUIT],
    ]


@pytest.mark.parametrize("reply", ["200 2.0.0 Ok", "299 2.0.0 Ok"])
def test_rset_takes_any_2xx(scripted: Callable[..., Scripted], fast: Settings, reply: str) -> None:
    server = scripted(MAIL=["451 4.3.0 later", "250 2.1.0 Ok"], RSET=reply)
    pool = SMTPPool(fast, server.url())
    pool.send(FROM, "a@example.org", MESSAGE)
    assert pool.send(FROM, "a@example.org", MESSAGE) == _sent(server)
    pool.close()
    assert len(server.sessions) == 1


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        ("550 5.1.1 no such user", Outcome.BOUNCE),
        ("550 mailbox unavailable", Outcome.FAILED),  # at the end of DATA, not RCPT
        ("451 4.3.0 later", Outcome.RETRY),
    ],
)
def test_the_end_of_data_is_classified_and_the_session_stays_clean(
    scripted: Callable[..., Scripted], fast: Settings, reply: str, outcome: Outcome
) -> None:
    server = scripted(**{".": [reply, "250 2.0.0 Ok: queued as 4F2B"]})
    pool = SMTPPool(fast, server.url())
    assert pool.send(FROM, "a@example.org", MESSAGE) == SendOutcome(
        outcome, int(reply[:3]), reply[4:], relay=server.url()
    )
    assert pool.send(FROM, "b@example.org", MESSAGE) == _sent(server)
    pool.close()
    assert server.sessions == [
        [EHLO, *_transaction("a@example.org"), *_transaction("b@example.org"), QUIT]
    ]


def test_a_dropped_connection_is_a_retry_and_the_next_send_reconnects(
    scripted: Callable[..., Scripted], fast: Settings
) -> None:
    server = scripted(RCPT=[HANGUP, "250 2.1.5 Ok"])
    pool = SMTPPool(fast, server.url())
    assert pool.send(FROM, "a@example.org", MESSAGE) == SendOutcome(
        Outcome.RETRY,
        None,
        "SMTPServerDisconnected: Connection unexpectedly closed",
        relay=server.url(),
    )
    assert pool.send(FROM, "a@example.org", MESSAGE) == _sent(server)
    pool.close()
    assert server.sessions == [
        [EHLO, f"MAIL FROM:<{FROM}>", "RCPT TO:<a@example.org>"],
        [EHLO, *_transaction(), QUIT],
    ]


# --- opening a session ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("greeting", "outcome"),
    [
        ("554 5.7.1 your IP is on our blocklist", Outcome.POLICY),
        ("421 4.3.2 too busy", Outcome.RETRY),
        ("554 5.3.2 not accepting network messages", Outcome.POLICY),  # about us, not a reader
        ("221 2.0.0 bye", Outcome.RETRY),  # a 2xx that is not 220 never means "sent"
        ("250 mx.example.net", Outcome.RETRY),
        ("299 odd", Outcome.RETRY),
        ("200 ok", Outcome.RETRY),
    ],
)
def test_a_greeting_other_than_220_is_the_relays_fault(
    scripted: Callable[..., Scripted], fast: Settings, greeting: str, outcome: Outcome
) -> None:
    server = scripted(greeting=greeting)
    pool = SMTPPool(fast, server.url())
    assert pool.send(FROM, "a@example.org", MESSAGE) == SendOutcome(
        outcome, int(greeting[:3]), greeting[4:], relay=server.url(), relay_fault=True
    )
    pool.close()


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        ("550 5.5.1 go away", Outcome.POLICY),
        ("300 odd", Outcome.RETRY),
        ("199 odd", Outcome.RETRY),
    ],
)
def test_a_refused_ehlo_is_the_relays_fault(
    scripted: Callable[..., Scripted], fast: Settings, reply: str, outcome: Outcome
) -> None:
    server = scripted(EHLO=reply)
    pool = SMTPPool(fast, server.url())
    assert pool.send(FROM, "a@example.org", MESSAGE) == SendOutcome(
        outcome, int(reply[:3]), f"EHLO: {reply[4:]}", relay=server.url(), relay_fault=True
    )
    pool.close()
    assert server.sessions == [[EHLO]]


@pytest.mark.parametrize("reply", ["200 mx.example.net", "299 mx.example.net"])
def test_any_2xx_to_ehlo_will_do(
    scripted: Callable[..., Scripted], fast: Settings, reply: str
) -> None:
    server = scripted(EHLO=reply)
    pool = SMTPPool(fast, server.url())
    assert pool.send(FROM, "a@example.org", MESSAGE) == _sent(server)
    pool.close()


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [("454 4.7.0 TLS not available", Outcome.RETRY), ("554 5.5.1 no TLS here", Outcome.POLICY)],
)
def test_a_refused_starttls_is_the_relays_fault(
    scripted: Callable[..., Scripted], fast: Settings, reply: str, outcome: Outcome
) -> None:
    server = scripted(extensions=("STARTTLS",), STARTTLS=reply)
    pool = SMTPPool(fast, server.url())
    assert pool.send(FROM, "a@example.org", MESSAGE) == SendOutcome(
        outcome, int(reply[:3]), reply[4:], relay=server.url(), relay_fault=True
    )
    pool.close()
    assert server.sessions == [[EHLO, "STARTTLS"]]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("userinfo", "user", "password"),
    [("us%40er:p%40ss@", "us@er", "p@ss"), ("us%40er@", "us@er", "")],
)
def test_ascii_credentials_go_through_smtplib(
    scripted: Callable[..., Scripted], fast: Settings, userinfo: str, user: str, password: str
) -> None:
    server = scripted(extensions=("AUTH PLAIN",))
    pool = SMTPPool(fast, server.url(userinfo))
    assert pool.send(FROM, "a@example.org", MESSAGE) == SendOutcome(
        Outcome.SENT,
        250,
        "2.0.0 Ok: queued as 4F2B",
        relay=f"smtp://us@er@{server.host}:{server.port}",
    )
    pool.close()
    plain = _b64("\0" + user + "\0" + password)
    assert server.sessions == [[EHLO, f"AUTH PLAIN {plain}", *_transaction(), QUIT]]


@pytest.mark.parametrize(
    ("extensions", "auth", "replies"),
    [
        (("AUTH PLAIN LOGIN",), ["AUTH PLAIN {plain}"], {}),
        (("AUTH plain",), ["AUTH PLAIN {plain}"], {"AUTH": "503 5.5.1 already authenticated"}),
        (("AUTH LOGIN",), ["AUTH LOGIN {user}", "{password}"], {"AUTH": "334 UGFzc3dvcmQ6"}),
    ],
)
def test_utf8_credentials_are_sent_by_hand(
    scripted: Callable[..., Scripted],
    fast: Settings,
    extensions: tuple[str, ...],
    auth: list[str],
    replies: dict[str, str],
) -> None:
    server = scripted(extensions=extensions, **replies)
    pool = SMTPPool(fast, server.url("J%C3%BCrgen:p%C3%A4ss@"))
    out = pool.send(FROM, "a@example.org", MESSAGE)
    pool.close()
    assert (out.outcome, out.relay_fault) == (Outcome.SENT, False)
    values = {"plain": _b64("\0J\u00fcrgen\0p\u00e4ss"), "user": _b64("J\u00fcrgen")}
    values["password"] = _b64("p\u00e4ss")
    assert server.sessions == [[EHLO, *(a.format(**values) for a in auth), *_transaction(), QUIT]]


@pytest.mark.parametrize(
    ("userinfo", "extensions", "replies", "expected"),
    [
        (
            "u:wrong@",
            ("AUTH PLAIN",),
            {"AUTH": "535 5.7.8 bad credentials"},
            (Outcome.POLICY, 535, "AUTH: 5.7.8 bad credentials"),
        ),
        (
            "u:wrong@",
            ("AUTH PLAIN",),
            {"AUTH": "500 5.5.2 odd"},
            (Outcome.POLICY, 500, "AUTH: 5.5.2 odd"),
        ),
        (
            "u:wrong@",
            ("AUTH PLAIN",),
            {"AUTH": "454 4.7.0 temporary failure"},
            (Outcome.RETRY, 454, "AUTH: 4.7.0 temporary failure"),
        ),
        (
            "J%C3%BCrgen:x@",
            ("AUTH PLAIN",),
            {"AUTH": "535 5.7.8 bad credentials"},
            (Outcome.POLICY, 535, "AUTH: 5.7.8 bad credentials"),
        ),
        (
            "J%C3%BCrgen:x@",
            ("AUTH LOGIN",),
            {"AUTH": "334 UGFzc3dvcmQ6", "*": "454 4.7.0 later"},
            (Outcome.RETRY, 454, "AUTH: 4.7.0 later"),
        ),
        (
            "J%C3%BCrgen:x@",
            ("AUTH LOGIN",),
            {"AUTH": "535 5.7.8 no"},
            (Outcome.POLICY, 535, "AUTH: 5.7.8 no"),
        ),
        (
            "u:p%C3%A4ss@",
            ("AUTH CRAM-MD5",),
            {},
            (Outcome.POLICY, None, "127.0.0.1: non-ASCII credentials need AUTH PLAIN or LOGIN"),
        ),
        (
            "u:p@",
            (),
            {},
            (Outcome.POLICY, None, "127.0.0.1: SMTP AUTH extension not supported by server."),
        ),
        (
            "u:p%C3%A4ss@",
            (),
            {},
            (Outcome.POLICY, None, "127.0.0.1: non-ASCII credentials need AUTH PLAIN or LOGIN"),
        ),
    ],
)
def test_failed_authentication_is_the_relays_fault(
    scripted: Callable[..., Scripted],
    fast: Settings,
    userinfo: str,
    extensions: tuple[str, ...],
    replies: dict[str, str],
    expected: tuple[Outcome, int | None, str],
) -> None:
    server = scripted(extensions=extensions, **replies)
    pool = SMTPPool(fast, server.url(userinfo))
    out = pool.send(FROM, "a@example.org", MESSAGE)
    pool.close()
    assert (out.outcome, out.code, out.response, out.relay_fault) == (*expected, True)
    assert not any(line.startswith("MAIL") for line in server.sessions[0])


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


def test_no_password_in_clear_text_to_a_host_that_is_not_this_one(
    scripted: Callable[..., Scripted], fast: Settings
) -> None:
    address = _public_address()
    if address is None:
        pytest.skip("no non-loopback interface to listen on")
    server = scripted(host=address, extensions=("AUTH PLAIN",))
    pool = SMTPPool(fast, server.url("u:secret@"))
    out = pool.send(FROM, "a@example.org", MESSAGE)
    pool.close()
    assert out == SendOutcome(
        Outcome.POLICY,
        None,
        f"{address} offers no STARTTLS: refusing to send the password in clear text "
        "(use smtps:// or a server with STARTTLS)",
        relay=f"smtp://u@{address}:{server.port}",
        relay_fault=True,
    )
    assert server.sessions[0] == [EHLO]  # nothing after EHLO: no AUTH
    anonymous = SMTPPool(fast, server.url())  # no credentials: nothing to protect
    assert anonymous.send(FROM, "a@example.org", MESSAGE).outcome is Outcome.SENT
    anonymous.close()


def test_a_server_that_never_says_hello_times_out(
    scripted: Callable[..., Scripted], make_settings: Callable[..., Settings]
) -> None:
    server = scripted(greeting=SILENT)
    pool = SMTPPool(make_settings(NEWSLETTER_SMTP_TIMEOUT="0.3"), server.url())
    assert pool.send(FROM, "a@example.org", MESSAGE) == SendOutcome(
        Outcome.RETRY,
        None,
        "SMTPServerDisconnected: Connection unexpectedly closed: timed out",  # smtplib's words
        relay=server.url(),
        relay_fault=True,
    )
    pool.close()


def test_an_unreachable_relay_is_its_fault(fast: Settings) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    pool = SMTPPool(fast, f"smtp://127.0.0.1:{port}")
    assert pool.send(FROM, "a@example.org", MESSAGE) == SendOutcome(
        Outcome.RETRY,
        None,
        "ConnectionRefusedError: [Errno 111] Connection refused",
        relay=f"smtp://127.0.0.1:{port}",
        relay_fault=True,
    )
    pool.close()


def test_the_client_waits_long_for_the_end_of_data_and_briefly_for_quit(
    scripted: Callable[..., Scripted], make_settings: Callable[..., Settings]
) -> None:
    server = scripted()
    conn = SMTPConnection(SMTPTarget.parse(server.url()), make_settings())  # 30 s by default
    sock = conn.smtp.sock
    assert sock is not None
    seen: list[tuple[str, float | None]] = []

    def at_end_of_data() -> None:
        deadline = time.monotonic() + 2  # the client sets it just after sending the "."
        while sock.gettimeout() == 30.0 and time.monotonic() < deadline:
            time.sleep(0.001)
        seen.append((".", sock.gettimeout()))

    server.hooks["."] = at_end_of_data
    server.hooks["QUIT"] = lambda: seen.append(("QUIT", sock.gettimeout()))
    assert conn.send(FROM, "a@example.org", MESSAGE) == SendOutcome(
        Outcome.SENT, 250, "2.0.0 Ok: queued as 4F2B"
    )
    assert sock.gettimeout() == 30.0
    conn.close()
    assert seen == [(".", 600.0), ("QUIT", 5.0)]
    assert server.sessions == [[EHLO, *_transaction(), QUIT]]


def test_closing_a_pool_says_quit_even_to_a_server_that_never_answers(
    scripted: Callable[..., Scripted], make_settings: Callable[..., Settings]
) -> None:
    server = scripted(QUIT=SILENT)
    pool = SMTPPool(make_settings(NEWSLETTER_SMTP_TIMEOUT="0.2"), server.url())
    assert pool.send(FROM, "a@example.org", MESSAGE) == _sent(server)
    pool.close()  # waits at most the timeout for the 221 that never comes
    assert server.sessions == [[EHLO, *_transaction(), QUIT]]


# --- several relays -------------------------------------------------------------------


def test_relays_are_tried_in_order_and_a_failing_one_is_skipped_next_time(
    scripted: Callable[..., Scripted], fast: Settings
) -> None:
    blocked = scripted(greeting="554 5.7.1 go away")
    live = scripted()
    pool = RelayPool(fast, (blocked.url(), live.url()))
    assert pool.send(FROM, "a@example.org", MESSAGE) == _sent(live)
    assert pool.send(FROM, "b@example.org", MESSAGE) == _sent(live)
    pool.close()
    assert len(blocked.sessions) == 1  # set aside after the first refusal
    assert live.sessions == [
        [EHLO, *_transaction("a@example.org"), *_transaction("b@example.org"), QUIT]
    ]


def test_when_every_relay_fails_the_last_answer_is_returned(
    scripted: Callable[..., Scripted], fast: Settings
) -> None:
    first = scripted(greeting="421 4.3.2 busy")
    last = scripted(MAIL="550 5.7.1 sender blocked")
    pool = RelayPool(fast, (first.url(), last.url()))
    assert pool.send(FROM, "a@example.org", MESSAGE) == SendOutcome(
        Outcome.POLICY, 550, "5.7.1 sender blocked", relay=last.url()
    )
    pool.close()
    assert last.sessions == [[EHLO, f"MAIL FROM:<{FROM}>", QUIT]]
