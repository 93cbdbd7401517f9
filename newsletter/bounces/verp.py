"""VERP tags: which delivery a bounce belongs to, unforgeably and without an address.

A tag is ``nl-<issue>-<subscriber>-<mac>``: the two ids in base 36 and 80 bits of
HMAC-SHA256 under a key derived from the app's secret key, in base 32.  All of it
is lower case, digits and hyphens, because mail systems lower-case local parts
and some drop anything fancier.  It goes into the envelope sender
(``bounces+TAG@domain``, so the DSN comes back to an address that names the
delivery) and into an ``X-Newsletter-Tag`` header (so a bounce whose envelope a
relay rewrote still quotes it).  Minting one costs one HMAC: cheap enough for
the per-recipient hot path.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

__all__ = [
    "TAG_PATTERN",
    "InvalidTag",
    "TagSigner",
    "envelope_sender",
    "feedback_id",
    "tag_from_address",
]

TAG_PATTERN = r"nl-[0-9a-z]{1,13}-[0-9a-z]{1,13}-[a-z2-7]{16}"
_TAG = re.compile(r"nl-([0-9a-z]{1,13})-([0-9a-z]{1,13})-([a-z2-7]{16})")
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_FEEDBACK_FIELD = re.compile(r"[^A-Za-z0-9._-]+")


class InvalidTag(ValueError):
    """Malformed, or its MAC does not match: forged or from another installation."""


def _b36(number: int) -> str:
    if number < 0:
        raise ValueError("ids are not negative")
    out = ""
    while True:
        number, digit = divmod(number, 36)
        out = _DIGITS[digit] + out
        if not number:
            return out


class TagSigner:
    """Mint and verify tags with one secret key."""

    def __init__(self, secret_key: str) -> None:
        self._key = hashlib.sha256(b"newsletter.verp.v1\x00" + secret_key.encode()).digest()

    def _mac(self, body: str) -> str:
        digest = hmac.new(self._key, body.encode("ascii"), hashlib.sha256).digest()[:10]
        return base64.b32encode(digest).decode("ascii").lower()

    def tag(self, issue_id: int, subscriber_id: int) -> str:
        body = f"nl-{_b36(issue_id)}-{_b36(subscriber_id)}"
        return f"{body}-{self._mac(body)}"

    def read(self, tag: str) -> tuple[int, int]:
        """(issue id, subscriber id) of a genuine tag; :class:`InvalidTag` otherwise."""
        match = _TAG.fullmatch(tag.strip().lower())
        if not match:
            raise InvalidTag("not a newsletter tag")
        issue, subscriber, mac = match.groups()
        if not hmac.compare_digest(self._mac(f"nl-{issue}-{subscriber}"), mac):
            raise InvalidTag("tag signature does not match")
        return int(issue, 36), int(subscriber, 36)


def envelope_sender(bounce_address: str, tag: str) -> str:
    """``bounces@news.example.org`` + tag → ``bounces+TAG@news.example.org``."""
    local, at, domain = bounce_address.rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"bounce address {bounce_address!r} is not local@domain")
    return f"{local}+{tag}@{domain}"


def tag_from_address(address: str) -> str | None:
    """The tag in a VERP address (``bounces+TAG@…``), if there is one."""
    local = address.rpartition("@")[0]
    _, plus, tag = local.rpartition("+")
    return tag.lower() if plus and _TAG.fullmatch(tag.lower()) else None


def feedback_id(issue_id: int, kind: str, list_name: str, sender: str) -> str:
    """``Feedback-ID: <issue>:<kind>:<list>:<sender>`` (Gmail's feedback-loop format).

    Fields may not contain colons; anything outside ``[A-Za-z0-9._-]`` becomes ``-``
    so no untrusted character can reach the header.
    """
    fields = [str(issue_id), kind, list_name, sender]
    return ":".join(_FEEDBACK_FIELD.sub("-", f).strip("-") or "x" for f in fields)
