"""Addresses and names as stored: one canonical form per mailbox, names safe in headers.

Split out of :mod:`newsletter.subscribers.store` (which re-exports these names) so the
subscriber life cycle and the text rules each fit on a screen.
"""

from __future__ import annotations

import re
import unicodedata

NAME_MAX = 200  # the column's width; also keeps a To header sane
EMAIL_MAX = 320  # longer input is rejected before it reaches the validator

# Invisible characters that can reorder or hide text (bidi overrides, zero-width
# space, BOM).  ZWJ/ZWNJ (U+200C/D) are kept: Persian and Indic names need them.
_INVISIBLE = re.compile("[\u200b\u200e\u200f\u202a-\u202e\u2060-\u2069\ufeff]")
_LINE_BREAKS = frozenset({"Cc", "Zl", "Zp", "Cs"})


class InvalidEmail(ValueError):
    """The address is not usable; ``reason`` is email-validator's explanation."""

    def __init__(self, raw: str, reason: str) -> None:
        self.raw = raw
        self.reason = reason
        super().__init__(f"{raw!r} is not a valid email address: {reason}")


def normalise_email(raw: str) -> str:
    """The canonical stored form of ``raw``, or :class:`InvalidEmail` saying why not.

    The form is the whole address lower-cased, with the domain in its ASCII (IDNA
    "xn--") spelling: ``User@Bücher.Example`` and ``user@xn--bcher-kva.example``
    both become ``user@xn--bcher-kva.example``.  Why ASCII rather than Unicode:
    it is what goes on the wire (RCPT TO and the To header) with any SMTP server,
    with no SMTPUTF8 extension and no header encoding corner cases, so what is
    stored is exactly what is sent.  For the same reason addresses whose *local*
    part is not ASCII are refused (email-validator's ``allow_smtputf8=False``):
    they can only be delivered end to end over SMTPUTF8, which this sender does
    not require of its relay.  The local part is lower-cased although RFC 5321
    lets a server treat it case-sensitively: in practice no mailbox provider
    does, and two rows for one person would mail them twice and break unsubscribe.
    """

    from email_validator import EmailNotValidError, validate_email

    value = raw.strip()
    if not value:
        raise InvalidEmail(raw, "no address given")
    if len(value) > EMAIL_MAX:
        raise InvalidEmail(raw[:40] + "…", f"longer than {EMAIL_MAX} characters")
    try:
        result = validate_email(value, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise InvalidEmail(raw, str(exc)) from None
    return str(result.ascii_email).lower()


def clean_name(raw: str | None) -> str:
    """A display name that is safe to put in a To header and on a page.

    Control characters (CR/LF included: Python 3.11.7's email package would let a
    newline through into a header, CVE-2024-6923), line/paragraph separators and
    invisible bidi/zero-width characters are removed, whitespace runs collapse to
    one space, and the result is capped at :data:`NAME_MAX` characters.  ``=?``
    is broken up so a name can never be decoded by a mail client as an RFC 2047
    encoded word (a way to smuggle a different-looking display name).
    """
    if not raw:
        return ""
    text = unicodedata.normalize("NFC", raw)
    if not text.isprintable():  # fast path: printable text has no Cc/Cf/Zl/Zp characters
        text = "".join(" " if unicodedata.category(ch) in _LINE_BREAKS else ch for ch in text)
        text = _INVISIBLE.sub("", text)
    text = text.replace("=?", "= ?")
    return " ".join(text.split())[:NAME_MAX].rstrip()


# Text a stranger could use to turn our confirmation email into their message.
_URL_LIKE = re.compile(
    r"(?:[a-z][a-z0-9+.-]*://|www\.)\S*"  # anything with a scheme, or www.
    r"|\S*[a-z0-9-]\.[a-z]{2,}(?:[/?#:]\S*)?(?=\s|$)",  # a bare host name: evil.example/login
    re.IGNORECASE,
)
_AT_ADDRESS = re.compile(r"\S*@\S*")
_FORM_SPECIALS = re.compile(r'[,;<>:"]')


def form_name(raw: str | None) -> str:
    """A name typed into the public form, stripped of what makes it a message.

    Anyone can type any address into the form, so the name field is text chosen
    by a stranger.  On top of :func:`clean_name`: URLs and bare host names,
    ``@``-addresses and the characters ``, ; < > : "`` are removed (what is left
    of "URGENT: your bank account is locked https://evil.example/login" is
    "URGENT your bank account is locked").  The confirmation email never shows it
    anyway (:mod:`newsletter.web.confirmations`); this keeps the stored name, used
    once the reader has confirmed, a name.
    """
    text = clean_name(raw)
    text = _AT_ADDRESS.sub(" ", text)
    text = _URL_LIKE.sub(" ", text)
    text = _FORM_SPECIALS.sub(" ", text)
    return " ".join(text.split())[:NAME_MAX].rstrip()


_DOTLESS_DOMAINS = frozenset({"gmail.com", "googlemail.com"})


def canonical_mailbox(email: str) -> str:
    """The inbox an address reaches, for per-address limits (never stored or shown).

    Lower-cased, ``+tag`` dropped, and for gmail.com/googlemail.com the dots in
    the local part ignored and googlemail.com read as gmail.com: ``J.Doe+x@Gmail.com``
    and ``jdoe@googlemail.com`` are one inbox, so one limit.
    """
    local, _, domain = email.strip().lower().rpartition("@")
    local = local.split("+", 1)[0] or local
    if domain in _DOTLESS_DOMAINS:
        local = local.replace(".", "") or local
        domain = "gmail.com"
    return f"{local}@{domain}"


def reader_reason(raw: str) -> str:
    """Why an address was refused, in words for the person who typed it.

    email-validator's messages are written for developers ("The part after the
    @-sign is not valid. It should have a period."); the form shows these instead.
    """
    text = raw.strip()
    if not text:
        return "Please enter your email address."
    if any(c.isspace() for c in text):
        return "Email addresses can't contain spaces. Please check it for typos."
    if "@" not in text:
        return "That address is missing an @."
    if text.count("@") > 1:
        return "That address has more than one @. Please enter just one address."
    local, _, domain = text.partition("@")
    if not local:
        return "Something is missing before the @."
    if not domain:
        return "Something is missing after the @ (such as example.com)."
    if "." not in domain.strip("."):
        return "The part after the @ needs a dot, as in example.com."
    return "That doesn't look like a complete email address. Please check it for typos."
