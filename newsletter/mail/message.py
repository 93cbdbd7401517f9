"""Finished message bytes: multipart/alternative, standards-complete headers, DKIM.

Building an ``EmailMessage`` per recipient costs milliseconds; a list of hundreds
of thousands needs microseconds.  So the message is compiled once per issue into a
``bytes`` format string: every header that is the same for everyone, both body
parts already quoted-printable encoded, and a ``%b`` slot wherever a per-recipient
value goes (To, Date, Message-ID, List-Unsubscribe, the greeting and the
unsubscribe link in each part).  :meth:`MessageFactory.build` then only encodes the
few small values and does one ``bytes % tuple``.

Placeholders sit between two QP soft line breaks (``=`` CRLF), so each value starts
on its own line and the encoded body keeps every line within 76 octets whatever
the value's length; soft breaks vanish on decoding.  Values are QP-encoded with
``binascii.b2a_qp`` (C speed) and HTML-escaped first for the HTML part.  The
multipart boundary begins with ``=_``, which quoted-printable text can never
contain, so no body can collide with it.
"""

from __future__ import annotations

import binascii
import html as html_module
import itertools
import operator
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from email.utils import format_datetime

from ..config import Settings
from ..context import Context
from . import headers
from .dkim import BodyHasher, DkimSigner
from .headers import clean_header_text, header_safe
from .render import ARCHIVE_URL, GREETING, PREFERENCES_URL, UNSUBSCRIBE_URL, greeting_for, http_url

__all__ = ["BuiltMessage", "MessageFactory", "build_single", "header_safe"]

# Slots: indexes into the per-recipient values tuple.
_TO, _DATE, _MSGID, _UNSUB, _GREET_TEXT, _GREET_HTML, _UNSUB_TEXT, _UNSUB_HTML, _TAG = range(9)
_PREFS_TEXT, _PREFS_HTML = 9, 10
_BODY_SLOTS = {
    ("text", GREETING): _GREET_TEXT,
    ("html", GREETING): _GREET_HTML,
    ("text", UNSUBSCRIBE_URL): _UNSUB_TEXT,
    ("html", UNSUBSCRIBE_URL): _UNSUB_HTML,
    ("text", PREFERENCES_URL): _PREFS_TEXT,
    ("html", PREFERENCES_URL): _PREFS_HTML,
}
_PLACEHOLDER = re.compile(
    f"{re.escape(GREETING)}|{re.escape(UNSUBSCRIBE_URL)}|{re.escape(PREFERENCES_URL)}"
)
_SOFT_BREAK = b"=\r\n"
_QP_MAX = 76  # RFC 2045 6.7: encoded lines at most 76 octets, soft break included


class BuiltMessage:
    """One recipient's message: CRLF bytes ready for SMTP DATA, and its Message-ID.

    A signed message is not signed by whoever builds it.  From
    :meth:`MessageFactory.build` the signing is handed to a few signing threads at
    once (``future``: the engine builds ahead of its connections, so the signatures
    are ready when a connection reads ``data``); otherwise (``sign``) it happens on
    first read of ``data``.  ``cryptography`` releases the GIL during the private-key
    operation, so signing threads and connection threads run on all cores while the
    engine's main thread only fills in templates.

    ``envelope_from`` is the VERP sender (``bounces+TAG@domain``) when
    NEWSLETTER_BOUNCE_ADDRESS is set; None means NEWSLETTER_FROM's address.
    """

    __slots__ = ("_data", "_future", "_sign", "envelope_from", "message_id")

    def __init__(
        self,
        message_id: str,
        data: bytes,
        sign: Callable[[bytes], bytes] | None = None,
        future: Future[bytes] | None = None,
        envelope_from: str | None = None,
    ) -> None:
        self.message_id = message_id
        self.envelope_from = envelope_from
        self._data = data
        self._sign = sign
        self._future = future

    @property
    def data(self) -> bytes:
        if self._future is not None:
            self._data, self._future = self._future.result(), None
        sign = self._sign
        if sign is not None:
            self._sign = None
            self._data = sign(self._data)
        return self._data


def qp(text: str) -> bytes:
    """Quoted-printable UTF-8 with CRLF line ends; no line longer than 76 octets."""
    return _qp(text, _QP_MAX)


def qp_open(text: str) -> bytes:
    """:func:`qp` for text that a soft line break (``=`` CRLF) follows: its last line
    keeps to 75 octets, so the ``=`` appended after it makes at most 76."""
    return _qp(text, _QP_MAX - 1)


def _qp(text: str, last_max: int) -> bytes:
    """``binascii.b2a_qp``, then any line over its limit folded again.

    ``b2a_qp`` is C-fast but not exact: a line ending in a space or tab that it
    encodes as ``=20``/``=09`` can come out at 77-78 octets, and its last line may
    use all 76 when our own soft break follows it.  Such lines (rare) are folded
    with soft breaks, never inside an ``=XX`` escape (in QP output ``=`` only ever
    starts an escape or is a soft break at a line's end).
    """
    lines = binascii.b2a_qp(text.encode("utf-8"), istext=True).split(b"\n")
    if len(lines[-1]) <= last_max and all(len(line) <= _QP_MAX for line in lines):
        return b"\r\n".join(lines)
    limits = [_QP_MAX] * (len(lines) - 1) + [last_max]
    return b"\r\n".join(_fold_qp(line, limit) for line, limit in zip(lines, limits, strict=True))


def _fold_qp(line: bytes, limit: int) -> bytes:
    pieces: list[bytes] = []
    while len(line) > limit:
        cut = _QP_MAX - 1  # 75 octets + "=" soft break
        if line[cut - 2 : cut - 1] == b"=":
            cut -= 2
        elif line[cut - 1 : cut] == b"=":
            cut -= 1
        pieces.append(line[:cut] + b"=")
        line = line[cut:]
    pieces.append(line)
    return b"\r\n".join(pieces)


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


class _Compiled:
    """The message with holes: a ``bytes`` format string and the slot order."""

    def __init__(
        self,
        ctx: Context,
        subject: str,
        html: str,
        text: str,
        *,
        archive_url: str,
        list_unsubscribe: bool,
        fixed_unsubscribe_url: str | None = None,
        feedback: str | None = None,
        tagged: bool = False,
    ) -> None:
        settings = ctx.settings
        subject = clean_header_text(subject)
        if not subject:
            raise ValueError("an email needs a subject")
        self.boundary = f"=_nl_{secrets.token_hex(12)}"
        self.domain = headers.addr_spec(settings.from_email).rpartition("@")[2]
        pieces: list[bytes | int] = [
            f"From: {headers.address(settings.from_name, settings.from_email)}\r\n".encode("ascii"),
            b"To: ",
            _TO,
            b"\r\n",
            headers.unstructured("Subject", subject).encode("ascii"),
            b"Date: ",
            _DATE,
            b"\r\nMessage-ID: ",
            _MSGID,
            b"\r\nMIME-Version: 1.0\r\n",
            f"List-Id: {headers.list_id(settings.site_name, settings.from_email)}\r\n".encode(
                "ascii"
            ),
        ]
        if tagged:  # names the delivery even when a relay rewrites the envelope
            pieces += [b"X-Newsletter-Tag: ", _TAG, b"\r\n"]
        if feedback is not None:  # verp.feedback_id: [A-Za-z0-9._:-] only
            pieces.append(f"Feedback-ID: {feedback}\r\n".encode("ascii"))
        if list_unsubscribe:
            pieces += [
                b"List-Unsubscribe: <",
                _UNSUB,
                b">\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
            ]
        pieces.append(
            f'Content-Type: multipart/alternative; boundary="{self.boundary}"\r\n\r\n'.encode()
        )
        body_from = len(pieces)
        for part, body in (("text", text), ("html", html)):
            body = _normalise_newlines(body).replace(
                ARCHIVE_URL, archive_url if part == "text" else html_module.escape(archive_url)
            )
            if fixed_unsubscribe_url is not None:
                url = fixed_unsubscribe_url
                body = body.replace(
                    UNSUBSCRIBE_URL, url if part == "text" else html_module.escape(url)
                )
            pieces.append(
                f"--{self.boundary}\r\nContent-Type: text/{'plain' if part == 'text' else 'html'};"
                ' charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'.encode()
            )
            pieces += _body_pieces(part, body)
            pieces.append(b"\r\n")
        pieces.append(f"--{self.boundary}--\r\n".encode())
        fmt = bytearray()
        order: list[int] = []
        for piece in pieces:
            if isinstance(piece, int):
                fmt += b"%b"
                order.append(piece)
            else:
                fmt += piece.replace(b"%", b"%%")
        self.format = bytes(fmt)
        self.pick = operator.itemgetter(*order)
        self.body_pieces = pieces[body_from:]
        self._hasher: BodyHasher | None = None

    def signer(
        self, signer: DkimSigner | None, values: tuple[bytes, ...]
    ) -> Callable[[bytes], bytes] | None:
        """What signs this recipient's bytes (``BuiltMessage.data``), or None unsigned."""
        if signer is None:
            return None
        hasher = self.hasher()
        if not hasher.exact:
            return signer.sign
        return lambda data: signer.sign(data, hasher.digest(values))

    def hasher(self) -> BodyHasher:
        if self._hasher is None:  # once per issue, and only when signing
            self._hasher = BodyHasher(self.body_pieces)
        return self._hasher


def _list_name(settings: Settings) -> str:
    """The list's short name for Feedback-ID: the List-Id's slug."""
    value = headers.list_id(settings.site_name, settings.from_email)
    return value.rpartition("<")[2].split(".", 1)[0]


def _body_pieces(part: str, body: str) -> list[bytes | int]:
    """QP-encode ``body`` around its placeholders, each between two soft line breaks."""
    out: list[bytes | int] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(body):
        out += [
            qp_open(body[pos : match.start()]) + _SOFT_BREAK,
            _BODY_SLOTS[(part, match.group())],
        ]
        out.append(_SOFT_BREAK)
        pos = match.end()
    out.append(qp(body[pos:]))
    return out


class _DateCache:
    """``Date:`` value in UTC (+0000), formatted at most once per second."""

    def __init__(self) -> None:
        self._cached: tuple[int, bytes] = (-1, b"")

    def now(self) -> bytes:
        second = int(time.time())
        cached = self._cached
        if cached[0] == second:
            return cached[1]
        value = format_datetime(datetime.fromtimestamp(second, UTC)).encode("ascii")
        self._cached = (second, value)
        return value


class MessageFactory:
    """Per-issue compiled message; :meth:`build` is the per-recipient hot path."""

    def __init__(
        self,
        ctx: Context,
        issue_id: int,
        subject: str,
        html: str,
        text: str,
        kind: str = "digest",
    ) -> None:
        from newsletter.bounces.verp import TagSigner, feedback_id

        settings = ctx.settings
        base = header_safe(settings.base_url)
        if http_url(base) is None:
            raise ValueError(f"NEWSLETTER_BASE_URL {base!r} is not an http(s) URL")
        self.issue_id = issue_id
        self._compiled = _Compiled(
            ctx,
            subject,
            html,
            text,
            archive_url=f"{base}/archive/{issue_id}",
            list_unsubscribe=True,
            feedback=feedback_id(issue_id, kind, _list_name(settings), self._sender_domain(ctx)),
            tagged=True,
        )
        self._domain = self._compiled.domain
        self._tags = TagSigner(ctx.secret_key)
        bounce = settings.bounce_address
        self._verp = bounce.rpartition("@") if bounce else None
        self._tokens = ctx.tokens
        self._prefix = f"{base}/unsubscribe/"
        self._prefix_escapes = html_module.escape(self._prefix) != self._prefix
        self._preferences_prefix = f"{base}/preferences/"
        self._signer = DkimSigner.from_settings(settings)
        self._nonce = secrets.token_hex(5)
        self._counter = itertools.count(1)
        self._dates = _DateCache()

    @staticmethod
    def _sender_domain(ctx: Context) -> str:
        return headers.addr_spec(ctx.settings.from_email).rpartition("@")[2]

    @property
    def signs(self) -> bool:
        return self._signer is not None

    def build(self, subscriber_id: int, email: str, name: str) -> BuiltMessage:
        """The finished bytes for one subscriber (raises ValueError for an unusable address)."""
        name = clean_header_text(name)
        url = self._prefix + self._tokens.unsubscribe(subscriber_id)
        greeting = greeting_for(name)
        message_id = (
            f"<{self.issue_id}.{subscriber_id}.{self._nonce}{next(self._counter)}@{self._domain}>"
        )
        url_qp = qp_open(url)
        tag = self._tags.tag(self.issue_id, subscriber_id)
        # Same alphabet as the unsubscribe URL (base + token chars): escaping alike.
        prefs = self._preferences_prefix + self._tokens.preferences(subscriber_id)
        prefs_qp = qp_open(prefs)
        values = (
            headers.address(name, email).encode("ascii"),
            self._dates.now(),
            message_id.encode("ascii"),
            url.encode("ascii"),
            qp_open(greeting),
            qp_open(html_module.escape(greeting)),
            url_qp,
            qp_open(html_module.escape(url)) if self._prefix_escapes else url_qp,
            tag.encode("ascii"),
            prefs_qp,
            qp_open(html_module.escape(prefs)) if self._prefix_escapes else prefs_qp,
        )
        data = self._compiled.format % self._compiled.pick(values)
        verp = self._verp
        envelope = f"{verp[0]}+{tag}@{verp[2]}" if verp is not None else None
        sign = self._compiled.signer(self._signer, values)
        if sign is not None and SIGN_AHEAD:
            future = _signing_threads().submit(sign, data)
            return BuiltMessage(message_id, b"", future=future, envelope_from=envelope)
        return BuiltMessage(message_id, data, sign, envelope_from=envelope)


SIGN_AHEAD = True  # False: sign in the thread that reads ``data`` (bench/bench_dkim.py compares)
_THREADS: ThreadPoolExecutor | None = None
_THREADS_GUARD = threading.Lock()


def _signing_threads() -> ThreadPoolExecutor:
    """One small pool per process, sized to the usable cores (made on first signed build)."""
    global _THREADS
    if _THREADS is not None:
        return _THREADS
    with _THREADS_GUARD:
        if _THREADS is None:
            try:
                cores = len(os.sched_getaffinity(0))
            except AttributeError:  # not Linux
                cores = os.cpu_count() or 1
            # twice the cores: a thread waiting to take the GIL back after its private-key
            # operation must not leave a core idle
            _THREADS = ThreadPoolExecutor(max_workers=2 * cores, thread_name_prefix="dkim")
        return _THREADS


def build_single(
    ctx: Context,
    to_email: str,
    to_name: str,
    subject: str,
    html: str,
    text: str,
    unsubscribe_url: str | None = None,
    *,
    issue_id: int | None = None,
    preferences_url: str | None = None,
) -> BuiltMessage:
    """One-off mail (confirmation, ``send --to`` test copy) through the same machinery.

    With ``unsubscribe_url`` the List-Unsubscribe headers are added and the body's
    unsubscribe link points there; without it (a confirmation to someone not yet
    subscribed) there are no List-Unsubscribe headers and any unsubscribe link in
    the body points at the site.
    """
    settings = ctx.settings
    base = header_safe(settings.base_url)
    if unsubscribe_url is not None:
        checked = http_url(header_safe(unsubscribe_url))
        if checked is None:
            raise ValueError("unsubscribe_url must be an http(s) URL")
        unsubscribe_url = checked
    archive = f"{base}/archive/{issue_id}" if issue_id is not None else f"{base}/archive"
    from newsletter.bounces.verp import feedback_id

    sender = headers.addr_spec(settings.from_email).rpartition("@")[2]
    compiled = _Compiled(
        ctx,
        subject,
        html,
        text,
        archive_url=archive,
        list_unsubscribe=unsubscribe_url is not None,
        fixed_unsubscribe_url=None if unsubscribe_url is not None else f"{base}/",
        feedback=feedback_id(issue_id or 0, "single", _list_name(settings), sender),
    )
    name = clean_header_text(to_name)
    greeting = greeting_for(name)
    message_id = f"<single.{secrets.token_hex(10)}@{compiled.domain}>"
    url = unsubscribe_url or f"{base}/"
    # A preferences link in the body: ``preferences_url``, else the site (an editor's
    # test copy has no reader's preferences).
    prefs = http_url(header_safe(preferences_url)) if preferences_url else None
    prefs = prefs or f"{base}/"
    values = (
        headers.address(name, to_email).encode("ascii"),
        _DateCache().now(),
        message_id.encode("ascii"),
        url.encode("ascii"),
        qp_open(greeting),
        qp_open(html_module.escape(greeting)),
        qp_open(url),
        qp_open(html_module.escape(url)),
        b"",  # no tag header on a one-off message
        qp_open(prefs),
        qp_open(html_module.escape(prefs)),
    )
    data = compiled.format % compiled.pick(values)
    sign = compiled.signer(DkimSigner.from_settings(settings), values)
    return BuiltMessage(message_id, sign(data) if sign is not None else data)
