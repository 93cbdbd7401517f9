"""Helpers for the digest/render/message/DKIM tests (and ``bench/bench_render.py``).

Stories come from the real fixture feeds through the Stories engineer's
``import_sources``; DKIM keys are real RSA keys generated here in pure Python
(Miller-Rabin primes, DER by hand) so the tests need no extra dependency.
"""

from __future__ import annotations

import base64
import email
import email.header
import email.policy
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

from _databases import folder_database_url
from conftest import feed_set
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from newsletter.config import load_settings
from newsletter.context import Context
from newsletter.mail.digest import build_issue
from newsletter.models import Story
from newsletter.stories.store import import_sources


def base_env(folder: Path) -> dict[str, str]:
    """The same settings as conftest's ``env`` fixture, for module-scoped contexts."""
    return {
        "NEWSLETTER_DATABASE_URL": folder_database_url(folder),
        "NEWSLETTER_OUTBOX": str(folder / "outbox"),
        "NEWSLETTER_FROM": "The Daily Digest <news@example.com>",
        "NEWSLETTER_BASE_URL": "https://news.example.com",
        "NEWSLETTER_SECRET_KEY": "test-secret-key-0123456789",
        "NEWSLETTER_POSTAL_ADDRESS": "1 Fleet Street, London EC4Y 1AA",
        "NEWSLETTER_SITE_NAME": "The Daily Digest",
    }


def open_ctx(folder: Path, **overrides: str) -> Context:
    return Context.open(load_settings({**base_env(folder), **overrides}, dotenv_path=None))


@dataclass(frozen=True)
class FrozenIssue:
    ctx: Context
    issue_id: int
    subject: str
    html: str
    text: str


def fixture_digest(ctx: Context, stories: int = 10) -> FrozenIssue:
    """Import the fixture feeds, feature the newest dated stories, build today's digest."""
    import_fixture_feeds(ctx)
    feature_dated(ctx, stories)
    with ctx.db.write() as session:
        issue = build_issue(session, ctx)
        assert issue is not None
        return FrozenIssue(ctx, issue.id, issue.subject, issue.html, issue.text)


def import_fixture_feeds(ctx: Context, names: Sequence[str] | None = None) -> list[int]:
    """Import fixture feeds (not featured) and return the new story ids.

    The real shared feeds when they are beside the project, else the project's own.
    """
    folder, default = feed_set()
    with ctx.db.write() as session:
        report = import_sources(session, [str(folder / n) for n in names or default], feature=False)
        ids: list[int] = []
        for result in report.results:
            assert result.error is None, result.error
            ids += result.story_ids
    return ids


def feature_dated(ctx: Context, count: int) -> list[int]:
    """Feature the ``count`` newest stories that have a date and an image, newest first."""
    with ctx.db.write() as session:
        rows = session.scalars(
            select(Story)
            .where(Story.published_at.is_not(None), Story.image_url.is_not(None))
            .order_by(Story.published_at.desc(), Story.id.desc())
            .limit(count)
        ).all()
        ids = [s.id for s in rows]
        session.execute(update(Story).where(Story.id.in_(ids)).values(featured=True))
    return ids


def add_story(session: Session, **fields: object) -> Story:
    """A story row straight into the database (for hostile input the importers would clean)."""
    n = secrets.token_hex(4)
    values: dict[str, object] = {
        "guid": f"test-{n}",
        "title": f"Story {n}",
        "url": f"https://example.org/{n}",
        "summary": "A summary.",
        "featured": True,
        "published_at": datetime.now(UTC) - timedelta(minutes=1),
        "source": "test",
    }
    values.update(fields)
    story = Story(**values)
    session.add(story)
    session.flush()
    return story


def parse_strict(data: bytes) -> EmailMessage:
    """Parse with ``email.policy.strict``: any defect raises instead of being recorded."""
    msg = email.message_from_bytes(data, policy=email.policy.strict)
    assert isinstance(msg, EmailMessage)
    return msg


def part_text(msg: EmailMessage, subtype: str) -> str:
    body = msg.get_body((subtype,))
    assert isinstance(body, EmailMessage)
    return str(body.get_content()).replace("\r\n", "\n")


def decoded_to_name(data: bytes) -> str:
    """The To display name decoded the RFC 2047 way (whitespace between encoded words dropped).

    Python's address parser puts a space between adjacent encoded words, which RFC
    2047 decoders (mail clients) do not, so long names are checked this way.
    """
    raw = email.message_from_bytes(data, policy=email.policy.compat32)["To"]
    assert isinstance(raw, str)
    phrase = raw.rpartition("<")[0].strip() if "<" in raw else ""
    if phrase.startswith('"') and phrase.endswith('"'):
        return phrase[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return str(email.header.make_header(email.header.decode_header(phrase)))


# --- RSA keys for DKIM, pure Python -------------------------------------------------

_SMALL_PRIMES = [p for p in range(3, 2000, 2) if all(p % d for d in range(3, int(p**0.5) + 1, 2))]


def _probably_prime(n: int, rounds: int = 24) -> bool:
    for p in _SMALL_PRIMES:
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d //= 2
        r += 1
    for _ in range(rounds):
        a = secrets.randbelow(n - 3) + 2
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime(bits: int, e: int) -> int:
    while True:
        candidate = secrets.randbits(bits) | (0b11 << (bits - 2)) | 1
        if (candidate - 1) % e and _probably_prime(candidate):
            return candidate


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(body)) + body


def _der_int(value: int) -> bytes:
    raw = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return _der(0x02, raw)


def rsa_key(bits: int = 2048) -> tuple[bytes, str]:
    """(PKCS#1 PEM private key, base64 SubjectPublicKeyInfo for the DNS ``p=`` tag)."""
    e = 65537
    while True:
        p, q = _prime(bits // 2, e), _prime(bits // 2, e)
        n = p * q
        if p != q and n.bit_length() == bits:
            break
    d = pow(e, -1, (p - 1) * (q - 1))
    fields = [0, n, e, d, p, q, d % (p - 1), d % (q - 1), pow(q, -1, p)]
    private_der = _der(0x30, b"".join(_der_int(v) for v in fields))
    b64 = base64.b64encode(private_der).decode()
    pem = "-----BEGIN RSA PRIVATE KEY-----\n"
    pem += "\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    pem += "\n-----END RSA PRIVATE KEY-----\n"
    rsa_public = _der(0x30, _der_int(n) + _der_int(e))
    algorithm = _der(0x30, bytes.fromhex("06092a864886f70d010101") + b"\x05\x00")
    spki = _der(0x30, algorithm + _der(0x03, b"\x00" + rsa_public))
    return pem.encode(), base64.b64encode(spki).decode()


def dns_stub(records: dict[str, str]):  # type: ignore[no-untyped-def]
    """A ``dnsfunc`` for ``dkim.verify``: answers TXT look-ups from ``records``."""

    def lookup(name: bytes | str, timeout: float = 5) -> bytes | None:
        key = name.decode() if isinstance(name, bytes) else name
        value = records.get(key.rstrip("."))
        return value.encode() if value is not None else None

    return lookup
