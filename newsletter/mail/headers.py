"""Header text we write ourselves: cleaning, RFC 2047 encoding and folding.

Python 3.11.7's ``email`` package predates the CVE-2024-6923 fix (a CR/LF hidden in
a value could survive folding and start a new header), and the per-recipient hot
path cannot afford an ``EmailMessage`` anyway, so every header value is produced
here by hand and is safe by construction:

* control characters (C0, DEL, C1, U+2028/2029, BOM, bidi overrides) are removed
  from untrusted text (:func:`clean_header_text`) or refused (:func:`header_safe`);
* any value that is not plain printable ASCII, or that contains ``=?`` (the start
  of an encoded word), is emitted as our own base64 encoded words.  A decoder turns
  those back into the literal characters and never decodes them a second time, so
  a name like ``=?utf-8?q?x=0D=0ABcc:...?=`` shows up as that text, not as headers;
* lines are folded at 78 characters where possible and never exceed 998.
"""

from __future__ import annotations

import base64
import re
import unicodedata

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff\u202a-\u202e\u2066-\u2069]")
_SPACES = re.compile(r"\s+")
_ATOM_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]+")
_ADDR = re.compile(r"[^\s\"<>()\[\]\\,;:@]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_LIST_SLUG = re.compile(r"[^a-z0-9]+")

MAX_LINE = 78
MAX_WORD = 70  # a longer ASCII word is encoded too, so that it can be folded
WORD_BYTES = 39  # 39 UTF-8 bytes -> 52 base64 chars -> a 64-char encoded word


def header_safe(value: str) -> str:
    """Return ``value`` unchanged, or raise ``ValueError`` if it cannot go into a header.

    Used for values we would otherwise place verbatim (settings, an editor's
    subject): refusing beats guessing what the operator meant.
    """
    if _UNSAFE.search(value):
        raise ValueError("control characters (CR, LF, ...) are not allowed in a mail header")
    if "=?" in value:
        raise ValueError("'=?' (an RFC 2047 encoded-word) is not allowed in a mail header")
    return value


def clean_header_text(value: str) -> str:
    """Untrusted text (a subscriber's name, a feed title) made fit for one header line.

    Control characters are dropped and runs of whitespace (including a CR/LF pair)
    become one space, so a hostile value loses its teeth but the reader's name
    still reads right.
    """
    return _SPACES.sub(" ", _UNSAFE.sub("", value)).strip()


def _plain_ascii(value: str) -> bool:
    return value.isascii() and value.isprintable() and "=?" not in value


def encoded_words(value: str, max_bytes: int = WORD_BYTES) -> list[str]:
    """``value`` as base64 UTF-8 encoded words, never splitting a character.

    A word break prefers the spot just after a space (the space stays inside the
    earlier word): RFC 2047 decoders drop the whitespace between encoded words, so
    the text must carry its own spaces.
    """
    words: list[str] = []
    chunk = ""
    size = 0
    for char in value:
        width = len(char.encode("utf-8"))
        if chunk and size + width > max_bytes:
            cut = chunk.rfind(" ") + 1
            if cut <= 0 or cut == len(chunk):
                cut = len(chunk)
            words.append(_word(chunk[:cut].encode("utf-8")))
            chunk = chunk[cut:]
            size = len(chunk.encode("utf-8"))
        chunk += char
        size += width
    if chunk:
        words.append(_word(chunk.encode("utf-8")))
    return words


def _word(data: bytes) -> str:
    return "=?utf-8?b?" + base64.b64encode(data).decode("ascii") + "?="


def fold_words(name: str, words: list[str]) -> str:
    """``Name: w1 w2 ...`` with CRLF+space folds so lines stay <= 78 characters.

    A single word longer than the limit stays whole (still far below 998).
    """
    lines: list[str] = []
    current = f"{name}:"
    has_word = False
    for word in words:
        if has_word and len(current) + 1 + len(word) > MAX_LINE:
            lines.append(current)
            current = " " + word
        else:
            current = f"{current} {word}"
        has_word = True
    lines.append(current)
    return "\r\n".join(lines) + "\r\n"


def unstructured(name: str, value: str) -> str:
    """A whole ``Name: value`` header line (CRLF-terminated) for free text like Subject.

    Plain ASCII words stay readable; each run of words that needs encoding becomes
    encoded words (the space between two encoded words is ignored by decoders, so
    spaces inside a run are encoded with it).
    """
    value = clean_header_text(value)
    tokens: list[str] = []
    run: list[str] = []
    for word in value.split():
        if _plain_ascii(word) and len(word) <= MAX_WORD:
            if run:
                tokens += encoded_words(" ".join(run))
                run = []
            tokens.append(word)
        else:
            run.append(word)
    if run:
        tokens += encoded_words(" ".join(run))
    return fold_words(name, tokens)


def phrase(display_name: str) -> str:
    """A display name for From/To/List-Id: atom, quoted-string or encoded words.

    The address-list specials are removed first (:func:`without_specials`).  They
    would be safe inside our own quoted-string or encoded words, but a downstream
    parser decodes them and Python's folder (3.11.7 ``policy.default``, as a relay
    or archiver would use) writes the decoded text back with only the non-ASCII
    words re-encoded and quotes or escapes lost, so ``Ålice, attacker@evil.example``
    (or ``Bob, attacker@evil.example``, or ``x\\", evil@attacker.example, "y``)
    would come out as two addresses.  Quoting the encoded words does not help:
    Python decodes inside quotes too and re-emits the text unquoted.
    """
    display_name = without_specials(clean_header_text(display_name))
    if not display_name:
        return ""
    if _plain_ascii(display_name) and len(display_name) <= 60:
        if _ATOM_PHRASE.fullmatch(display_name):
            return display_name
        return f'"{display_name}"'  # e.g. a "." (no quote or backslash is left to escape)
    return "\r\n ".join(encoded_words(display_name))


_SPECIALS = re.compile(r'[,;:<>@"()\[\]\\]+')


def without_specials(display_name: str) -> str:
    """``display_name`` without the characters that make a decoded name an address list.

    ``, ; : < > @ " ( ) [ ] \\`` become spaces: after any decode and re-fold the
    name is still words in front of one ``<address>``.
    """
    return _SPACES.sub(" ", _SPECIALS.sub(" ", display_name)).strip()


def addr_spec(email: str) -> str:
    """A bare address checked for header use; IDN domains become their ASCII form.

    Raises ``ValueError`` for anything that is not a plain ``local@domain``: a
    non-ASCII local part would need SMTPUTF8, and anything else (control
    characters, an encoded word) could smuggle header syntax.
    """
    if not email.isascii():
        local, sep, domain = email.rpartition("@")
        if not sep or not local.isascii():
            raise ValueError(f"address {email!r} needs SMTPUTF8, which is not supported")
        try:
            email = f"{local}@{domain.encode('idna').decode('ascii')}"
        except UnicodeError:
            raise ValueError(f"address {email!r} has an invalid domain") from None
    if not _ADDR.fullmatch(email) or not email.isprintable():
        raise ValueError(f"address {email!r} cannot be used in a mail header")
    if "=?" in email:
        # Legal atext, but mail parsers (Python's among them) decode an encoded word
        # even in a local part: ``=?utf-8?q?=0D=0ABcc:...?=@x`` would come out as a
        # CR/LF and a new header on any system that parses and re-serialises it.
        raise ValueError(f"address {email!r} contains an RFC 2047 encoded word")
    return email


def address(display_name: str, email: str) -> str:
    """``Name <addr>`` (or just ``addr``), folded safely; continuation lines start with a space."""
    spec = addr_spec(email)
    shown = phrase(display_name)
    return f"{shown} <{spec}>" if shown else spec


def list_id(site_name: str, from_email: str) -> str:
    """The List-Id value ``Name <slug.domain>`` (RFC 2919): stable per list and domain."""
    local, _, domain = addr_spec(from_email).rpartition("@")
    folded = unicodedata.normalize("NFKD", clean_header_text(site_name).lower())
    slug = _LIST_SLUG.sub("-", "".join(c for c in folded if not unicodedata.combining(c)))
    slug = slug.strip("-")[:60].strip("-")
    if not slug:
        slug = _LIST_SLUG.sub("-", local.lower()).strip("-") or "newsletter"
    shown = phrase(site_name)
    return f"{shown} <{slug}.{domain}>" if shown else f"<{slug}.{domain}>"
