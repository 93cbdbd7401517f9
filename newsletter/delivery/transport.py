"""Getting bytes to a mail server (or into a Maildir outbox), and saying what happened.

Both transports offer ``send(envelope_from, recipient, data) -> SendOutcome`` and
``close()``: :class:`SMTPPool` for ``NEWSLETTER_SMTP_URL`` (up to ``smtp_connections``
reused connections; ``smtp://`` upgrades with STARTTLS when offered, ``smtps://`` is TLS
from the first byte, certificates always verified; a drop or a 421 replaces the
connection), else :class:`newsletter.delivery.outbox.MaildirOutbox`, the embedded default.

Every reply is classified once, here (:func:`classify`): sent / retry / bounce / policy /
quota / failed.  Several relays (``NEWSLETTER_SMTP_URL`` comma-separated) go through
:class:`RelayPool`: tried in order, a relay that cannot be reached, fails TLS or
authentication, keeps answering 421, refuses us by policy or says its daily quota is
used up is set aside for a while, and the message goes to the next one at once.

The conversation is written by hand on smtplib's connection and reply parser, to
pipeline ``MAIL``/``RCPT``/``DATA`` in one round trip (RFC 2920) and dot-stuff with one
``bytes.replace``: that keeps the engine near the link's limit (``bench/bench_send.py``).
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import re
import smtplib
import socket
import ssl
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from urllib.parse import unquote, urlsplit

from ..config import Settings
from .outcome import Outcome as Outcome
from .outcome import SendOutcome as SendOutcome
from .outcome import Transport as Transport

log = logging.getLogger(__name__)


_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")
_AUTH_CODES = frozenset({530, 534, 535, 538})  # RFC 4954: authentication required/failed
_MAILBOX_CODES = frozenset({550, 551, 553})  # RFC 5321 mailbox replies, when no 5.x.y is given
DATA_DONE_TIMEOUT = 600.0  # RFC 5321 4.5.3.2.6: the reply to the end of DATA may be slow
_EXPECTED = {"mail": (250,), "rcpt": (250, 251), "data": (354,)}  # anything else ends the try
_STAGES = tuple(_EXPECTED)


# A relay's own daily quota, in the words relays use: Gmail "4.7.0 ... Daily sending quota
# exceeded" and "5.4.5 Daily user sending quota exceeded", SES "Daily message quota
# exceeded" / "Sending quota exceeded", Microsoft 365 "5.1.90 ... reached your daily limit
# for message recipients", "daily sending limit".  A reader's full mailbox ("over quota",
# "mailbox quota exceeded") does not match: it names neither a day nor sending.
_QUOTA = re.compile(
    r"\b(?:daily|per[- ]day|24[- ]hours?)\b[^.;]{0,40}?\b(?:quota|limit)"
    r"|\b(?:quota|limit)\b[^.;]{0,40}?\b(?:daily|per[- ]day|24[- ]hours?|for today)\b"
    r"|\bsending (?:quota|limit)\b",
    re.IGNORECASE,
)


def is_quota_refusal(response: str) -> bool:
    """Does this refusal say the relay's daily sending quota is used up?"""
    return _QUOTA.search(response) is not None


def classify(
    code: int,
    response: str,
    stage: str = "data",  # pragma: no mutate (equivalent: any stage not named acts as "data")
) -> Outcome:
    """Map an SMTP reply at ``stage`` (session/mail/rcpt/data) to an :class:`Outcome`.

    The enhanced status code (RFC 3463) decides when present: 550 is used both for "no
    such user" (5.1.1) and for "looks like spam" (5.7.1).  Without one, a 550/551/553 to
    ``RCPT`` is a mailbox problem and the authentication codes a policy problem.  A
    relay's daily-quota refusal is :attr:`Outcome.QUOTA` whatever its code (Microsoft
    gives it a 5.1.x, which would otherwise bounce the reader).
    """
    if 200 <= code < 300:
        return Outcome.SENT
    if code >= 400 and is_quota_refusal(response):
        return Outcome.QUOTA
    if code < 500:  # 4xx, and nonsense codes: try again later rather than lose a reader
        return Outcome.RETRY
    if stage in ("session", "mail"):
        # greeting, EHLO, STARTTLS, AUTH, MAIL FROM: about us, not the reader
        # (even "553 5.1.8 sender domain unknown" must not bounce a subscriber)
        return Outcome.POLICY
    match = _ENHANCED.match(response)
    if match and match.group(1) == "5":
        subject = match.group(2)
        if subject in ("1", "2"):
            return Outcome.BOUNCE
        if subject == "7":
            return Outcome.POLICY
        return Outcome.FAILED
    if code in _AUTH_CODES:
        return Outcome.POLICY
    if stage == "rcpt" and code in _MAILBOX_CODES:
        return Outcome.BOUNCE
    return Outcome.FAILED


def _decode(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return " ".join(text.split())[:1000]


@dataclass(frozen=True)
class SMTPTarget:
    """A parsed ``NEWSLETTER_SMTP_URL`` (credentials percent-decoded)."""

    implicit_tls: bool
    host: str
    port: int
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> SMTPTarget:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError(f"not an smtp:// or smtps:// URL: {url!r}")
        implicit = parts.scheme == "smtps"
        return cls(
            implicit_tls=implicit,
            host=parts.hostname,
            port=parts.port or (465 if implicit else 587),
            username=unquote(parts.username) if parts.username is not None else None,
            password=unquote(parts.password) if parts.password is not None else None,
        )

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:  # never print the password
        user = f"{self.username}@" if self.username else ""
        return f"{'smtps' if self.implicit_tls else 'smtp'}://{user}{self.host}:{self.port}"


class _Refused(Exception):
    """A reply that ends this attempt and its connection; carries the classified outcome."""

    def __init__(self, outcome: SendOutcome) -> None:
        super().__init__(outcome.text)
        self.outcome = outcome


def _tls_context(settings: Settings) -> ssl.SSLContext:  # CA_FILE: trust a private CA
    cafile = str(settings.smtp_ca_file) if settings.smtp_ca_file else None
    return ssl.create_default_context(cafile=cafile)


class SMTPConnection:
    """One live SMTP session; not thread-safe (the pool hands it to one thread at a time)."""

    def __init__(self, target: SMTPTarget, settings: Settings) -> None:
        self.target = target
        self.timeout = settings.smtp_timeout
        self._settings = settings
        self.smtp: smtplib.SMTP = self._open()
        self.pipelining = "pipelining" in self.smtp.esmtp_features  # keys are lowercase
        self.smtputf8 = "smtputf8" in self.smtp.esmtp_features
        # a transaction was left half-way: RSET before the next one
        self.dirty = False  # pragma: no mutate (equivalent: None is as false)

    def _open(self) -> smtplib.SMTP:
        t = self.target
        helo = socket.gethostname()  # not getfqdn(): that can stall on DNS
        context = _tls_context(self._settings)
        smtp: smtplib.SMTP
        if t.implicit_tls:
            smtp = smtplib.SMTP_SSL(local_hostname=helo, timeout=self.timeout, context=context)
        else:
            smtp = smtplib.SMTP(local_hostname=helo, timeout=self.timeout)
        smtp._host = t.host  # type: ignore[attr-defined]  # TLS server_hostname (SNI, checks)
        try:
            code, msg = smtp.connect(t.host, t.port)
            if code != 220:
                text = _decode(msg)
                # Only 220 opens a session: any other 2xx greeting (a "221 bye") is
                # nonsense here and must never count as the message sent.
                other_2xx = 200 <= code < 300
                outcome = Outcome.RETRY if other_2xx else classify(code, text, "session")
                raise _Refused(SendOutcome(outcome, code, text))
            self._expect(smtp.ehlo(), "EHLO")
            if not t.implicit_tls and "starttls" in smtp.esmtp_features:
                smtp.starttls(context=context)  # anything but 220 raises SMTPResponseException
                self._expect(smtp.ehlo(), "EHLO")
            if t.username is not None:
                encrypted = t.implicit_tls or isinstance(smtp.sock, ssl.SSLSocket)
                if not encrypted and not t.loopback:
                    raise _Refused(
                        SendOutcome(
                            Outcome.POLICY,
                            None,
                            f"{t.host} offers no STARTTLS: refusing to send the password "
                            "in clear text (use smtps:// or a server with STARTTLS)",
                        ),
                    )
                _login(smtp, t.username, t.password or "")
        except BaseException:
            smtp.close()
            raise
        return smtp

    @staticmethod
    def _expect(reply: tuple[int, bytes], what: str) -> None:
        code, msg = reply
        if not 200 <= code < 300:
            text = _decode(msg)
            outcome = classify(code, text, "session")
            raise _Refused(SendOutcome(outcome, code, f"{what}: {text}"))

    def send(self, envelope_from: str, recipient: str, data: bytes) -> SendOutcome:
        """One transaction for one recipient; raises on a broken connection."""
        smtp = self.smtp
        if "\r" in envelope_from + recipient or "\n" in envelope_from + recipient:
            # as smtplib.putcmd refuses: a line break would smuggle in SMTP commands
            return SendOutcome(Outcome.FAILED, None, "control characters in an address")
        options = ""
        if not (envelope_from.isascii() and recipient.isascii()):
            if not self.smtputf8:
                return SendOutcome(
                    Outcome.FAILED, None, "the server does not accept non-ASCII addresses"
                )
            options = " SMTPUTF8"
        if self.dirty:
            self._reply_ok(b"RSET\r\n", "RSET")
        mail = f"MAIL FROM:<{envelope_from}>{options}\r\n".encode()
        rcpt = f"RCPT TO:<{recipient}>\r\n".encode()
        assert smtp.sock is not None
        self.dirty = True
        if self.pipelining:
            smtp.sock.sendall(mail + rcpt + b"DATA\r\n")
            replies = [smtp.getreply(), smtp.getreply(), smtp.getreply()]
        else:
            replies = []
            for stage, command in (("mail", mail), ("rcpt", rcpt), ("data", b"DATA\r\n")):
                smtp.sock.sendall(command)
                replies.append(smtp.getreply())
                if replies[-1][0] not in _EXPECTED[stage]:
                    break
        refusal: SendOutcome | None = None
        for i, (code, msg) in enumerate(replies):  # fewer than three if one ended the try
            stage = _STAGES[i]
            if code == 421:
                raise _Refused(_closing(_decode(msg)))
            if refusal is None and code not in _EXPECTED[stage]:
                text = _decode(msg)
                if code < 400:  # e.g. 252 to RCPT: out of step (perhaps in DATA): hang up
                    smtp.close()
                    raise _Refused(SendOutcome(Outcome.RETRY, code, text))
                refusal = SendOutcome(classify(code, text, stage), code, text)
        if refusal is not None:
            if replies[-1][0] == 354 and len(replies) == 3:
                # RFC 2920: DATA was accepted although a command before it failed;
                # end the (empty) message, its reply is meaningless.
                smtp.sock.sendall(b".\r\n")
                smtp.getreply()
            return refusal
        smtp.sock.sendall(_dot_stuff(data))
        smtp.sock.settimeout(max(self.timeout, DATA_DONE_TIMEOUT))  # a timeout here: duplicate
        code, msg = smtp.getreply()
        smtp.sock.settimeout(self.timeout)
        text = _decode(msg)
        if code == 421:
            raise _Refused(_closing(text))
        self.dirty = False  # pragma: no mutate (equivalent: None is as false)
        return SendOutcome(classify(code, text), code, text)

    def _reply_ok(self, command: bytes, what: str) -> None:
        assert self.smtp.sock is not None
        self.smtp.sock.sendall(command)
        code, msg = self.smtp.getreply()
        if not 200 <= code < 300:
            text = _decode(msg)
            outcome = Outcome.RETRY if code == 421 else classify(code, text, "session")
            raise _Refused(SendOutcome(outcome, code, f"{what}: {text}"))

    def close(self) -> None:
        try:
            if self.smtp.sock is not None:
                self.smtp.sock.settimeout(min(self.timeout, 5.0))
                self.smtp.quit()
        except (OSError, smtplib.SMTPException):
            pass  # closing a connection that is already gone: nothing to report
        finally:
            self.smtp.close()


def _closing(text: str) -> SendOutcome:
    """A 421 (the server closes the channel): retry later, or its quota is used up."""
    return SendOutcome(Outcome.QUOTA if is_quota_refusal(text) else Outcome.RETRY, 421, text)


def _login(smtp: smtplib.SMTP, user: str, password: str) -> None:
    """AUTH with UTF-8 credentials (RFC 4616); smtplib encodes them as ASCII and crashes."""
    if user.isascii() and password.isascii():
        smtp.login(user, password)
        return
    offered = smtp.esmtp_features.get("auth", "").upper().split()
    b64 = [base64.b64encode(x.encode()).decode() for x in (f"\0{user}\0{password}", user, password)]
    if "PLAIN" in offered:
        code, reply = smtp.docmd("AUTH", "PLAIN " + b64[0])
    elif "LOGIN" in offered:
        code, reply = smtp.docmd("AUTH", "LOGIN " + b64[1])
        if code == 334:
            code, reply = smtp.docmd(b64[2])
    else:
        raise smtplib.SMTPNotSupportedError("non-ASCII credentials need AUTH PLAIN or LOGIN")
    if code not in (235, 503):
        raise smtplib.SMTPAuthenticationError(code, reply)


def _dot_stuff(data: bytes) -> bytes:
    """RFC 5321 4.5.2 transparency plus the terminating ``.``, on CRLF-normalised bytes."""
    crlf = data.count(b"\r\n")  # pragma: no mutate (equivalent: skips a no-op re.sub)
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        data = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\r\n.", b"\r\n..")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


class SMTPPool:
    """Up to ``size`` lazily opened connections, replaced after any failure (one retry)."""

    def __init__(self, settings: Settings, url: str) -> None:
        self.target = SMTPTarget.parse(url)
        self.name = str(self.target)
        self.settings = settings
        self.concurrency = settings.smtp_connections
        self.description = f"{self.target} ({self.concurrency} connections)"
        self._idle: list[SMTPConnection] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self._closed = False  # pragma: no mutate (equivalent: None is as false)

    def send(self, envelope_from: str, recipient: str, data: bytes) -> SendOutcome:
        """One message; the outcome names this relay, and whether opening a session failed."""
        with self._slots:
            with self._lock:
                if self._closed:
                    raise RuntimeError("transport is closed")
                conn = self._idle.pop() if self._idle else None
            opening = conn is None
            try:
                if conn is None:
                    conn = SMTPConnection(self.target, self.settings)
                    opening = False
                outcome = conn.send(envelope_from, recipient, data)
            except _Refused as refused:
                if conn is not None:
                    conn.close()
                return self._mark(refused.outcome, opening)
            except ssl.SSLCertVerificationError as exc:
                if conn is not None:
                    conn.close()
                text = f"TLS certificate of {self.target.host}: {exc}"
                return self._mark(SendOutcome(Outcome.POLICY, None, text), opening)
            except smtplib.SMTPAuthenticationError as exc:
                text = _decode(exc.smtp_error)
                kind = Outcome.RETRY if exc.smtp_code < 500 else Outcome.POLICY
                return self._mark(SendOutcome(kind, exc.smtp_code, f"AUTH: {text}"), opening)
            except smtplib.SMTPNotSupportedError as exc:
                text = f"{self.target.host}: {exc}"
                return self._mark(SendOutcome(Outcome.POLICY, None, text), opening)
            except smtplib.SMTPResponseException as exc:
                if conn is not None:
                    conn.close()
                text = _decode(exc.smtp_error)
                kind = classify(exc.smtp_code, text, "session")
                return self._mark(SendOutcome(kind, exc.smtp_code, text), opening)
            except (OSError, smtplib.SMTPException) as exc:  # dropped, refused, timed out
                if conn is not None:
                    conn.close()
                return self._mark(SendOutcome(Outcome.RETRY, None, _describe(exc)), opening)
            with self._lock:
                if self._closed:
                    conn.close()
                else:
                    self._idle.append(conn)
            return self._mark(outcome, False)

    def _mark(self, outcome: SendOutcome, opening: bool) -> SendOutcome:
        return replace(outcome, relay=self.name, relay_fault=opening)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out waiting for the server"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def open_transport(settings: Settings) -> Transport:
    """The SMTP pool for ``NEWSLETTER_SMTP_URL`` (relays for a list), else the Maildir."""
    urls = settings.smtp_urls
    if len(urls) > 1:
        return RelayPool(settings, urls)
    if urls:
        return SMTPPool(settings, urls[0])
    from .outbox import MaildirOutbox

    return MaildirOutbox(settings.outbox)


SET_ASIDE_FIRST = 30.0  # seconds a failing relay is set aside the first time...
SET_ASIDE_MAX = 600.0  # ...doubling each time in a row, up to this
STREAK_421 = 3  # 421s in a row (on open sessions) before a relay counts as failing


class _Relay:
    def __init__(self, pool: SMTPPool) -> None:
        self.pool = pool
        self.down_until = 0.0  # monotonic; 0: in service
        self.failures = 0  # set-asides in a row
        self.closing_streak = 0
        self.why = ""


class RelayPool:
    """Several relays tried in order; a failing one is set aside and the next takes over.

    Failing means: the session could not be opened (connection refused, timeout, TLS,
    authentication, a 4xx/5xx greeting or EHLO), :data:`STREAK_421` 421s in a row, a
    policy refusal (5.7.x) or a daily-quota refusal.  Those messages were not accepted,
    so the same message goes to the next relay at once (no duplicate).  A relay is set
    aside for :data:`SET_ASIDE_FIRST` seconds, doubling to :data:`SET_ASIDE_MAX` (until
    local midnight after a quota refusal); the first relay in the list that is in
    service carries the send.  When every relay has failed, the last one's answer is
    returned: a 5.7.x from the last relay pauses the issue as with a single relay.
    """

    def __init__(self, settings: Settings, urls: tuple[str, ...]) -> None:
        self.settings = settings
        self.relays = [_Relay(SMTPPool(settings, url)) for url in urls]
        self.concurrency = settings.smtp_connections
        names = ", then ".join(r.pool.name for r in self.relays)
        self.description = f"{names} ({self.concurrency} connections)"
        self._lock = threading.Lock()

    def send(self, envelope_from: str, recipient: str, data: bytes) -> SendOutcome:
        outcome: SendOutcome | None = None  # pragma: no mutate (equivalent: the loop always runs)
        for relay in self._candidates():
            outcome = relay.pool.send(envelope_from, recipient, data)
            if not self._failing(relay, outcome):
                return outcome
        assert outcome is not None
        return outcome

    def _candidates(self) -> list[_Relay]:
        """Relays in service, in order; none: the one whose time-out ends first."""
        now = time.monotonic()
        with self._lock:
            ready = [r for r in self.relays if r.down_until <= now]
            return ready or [min(self.relays, key=lambda r: r.down_until)]

    def _failing(self, relay: _Relay, outcome: SendOutcome) -> bool:
        """Note the outcome; True when the relay is set aside (try the next one)."""
        kind = outcome.outcome
        with self._lock:
            if outcome.code == 421 and not outcome.relay_fault and kind is Outcome.RETRY:
                relay.closing_streak += 1
                failing = relay.closing_streak >= STREAK_421
            else:
                relay.closing_streak = 0
                failing = outcome.relay_fault or kind in (Outcome.POLICY, Outcome.QUOTA)
            if not failing:
                if kind is Outcome.SENT:
                    relay.failures = 0
                return False
            relay.failures += 1
            relay.closing_streak = 0
            pause = min(SET_ASIDE_MAX, SET_ASIDE_FIRST * 2 ** (relay.failures - 1))
            if kind is Outcome.QUOTA:
                pause = max(pause, _seconds_to_midnight(datetime.now(self.settings.tz)))
            relay.down_until = time.monotonic() + pause
            relay.why = outcome.text
        log.warning("relay %s set aside for %.0f s: %s", relay.pool.name, pause, outcome.text)
        return True

    def close(self) -> None:
        for relay in self.relays:
            relay.pool.close()


def _seconds_to_midnight(now: datetime) -> float:
    """Seconds from ``now`` (aware, in the newsletter's time zone) to its next midnight."""
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(60.0, (midnight - now).total_seconds())
