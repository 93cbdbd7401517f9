"""DKIM: sign with a freshly generated RSA key, verify with dkimpy through a local DNS stub."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest
from _digest_support import (
    FrozenIssue,
    dns_stub,
    fixture_digest,
    open_ctx,
    parse_strict,
    rsa_key,
)

from newsletter.context import Context
from newsletter.dkimsign import SIGNED_HEADERS, DkimKeyError
from newsletter.message import MessageFactory, build_single

SELECTOR = "nl2026"


@pytest.fixture(scope="module")
def keypair() -> tuple[bytes, str]:
    return rsa_key(2048)


@pytest.fixture(scope="module")
def signed(
    tmp_path_factory: pytest.TempPathFactory, keypair: tuple[bytes, str]
) -> Iterator[FrozenIssue]:
    folder = tmp_path_factory.mktemp("dkim")
    key_file = folder / "dkim.pem"
    key_file.write_bytes(keypair[0])
    ctx = open_ctx(
        folder, NEWSLETTER_DKIM_KEY_FILE=str(key_file), NEWSLETTER_DKIM_SELECTOR=SELECTOR
    )
    yield fixture_digest(ctx)
    ctx.close()


@pytest.fixture(scope="module")
def dns(keypair: tuple[bytes, str]):  # type: ignore[no-untyped-def]
    return dns_stub({f"{SELECTOR}._domainkey.example.com": f"v=DKIM1; k=rsa; p={keypair[1]}"})


def _signature_tags(data: bytes) -> dict[str, str]:
    msg = parse_strict(data)
    raw = re.sub(r"\s+", "", str(msg["DKIM-Signature"]))
    return dict(tag.split("=", 1) for tag in raw.split(";") if tag)


def test_signed_digest_verifies(signed: FrozenIssue, dns) -> None:  # type: ignore[no-untyped-def]
    factory = MessageFactory(signed.ctx, signed.issue_id, signed.subject, signed.html, signed.text)
    assert factory.signs
    built = factory.build(11, "reader@example.org", "Zoë Ωmega")
    assert built.data.startswith(b"DKIM-Signature: ")
    assert dkim.verify(built.data, dnsfunc=dns)
    tags = _signature_tags(built.data)
    assert tags["a"] == "rsa-sha256"
    assert tags["d"] == "example.com" and tags["s"] == SELECTOR
    assert tags["c"] == "relaxed/relaxed"
    signed_headers = tags["h"].lower().split(":")
    for name in SIGNED_HEADERS:
        assert name.decode() in signed_headers
    lines = built.data.split(b"\r\n")
    assert max(len(line) for line in lines) <= 998
    assert not parse_strict(built.data).defects


def _tamper(data: bytes, old: bytes, new: bytes) -> bytes:
    assert old in data
    return data.replace(old, new, 1)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (
            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click",
            b"List-Unsubscribe-Post: List-Unsubscribe=Two-Click",
        ),
        (b"List-Unsubscribe: <https://news.example.com/", b"List-Unsubscribe: <https://evil.test/"),
        (b"To: reader@example.org", b"To: other@example.org"),
        (b"Read the story", b"Read the STORY"),
    ],
)
def test_tampering_breaks_the_signature(  # type: ignore[no-untyped-def]
    signed: FrozenIssue, dns, old: bytes, new: bytes
) -> None:
    factory = MessageFactory(signed.ctx, signed.issue_id, signed.subject, signed.html, signed.text)
    data = factory.build(12, "reader@example.org", "").data
    assert dkim.verify(data, dnsfunc=dns)
    assert not dkim.verify(_tamper(data, old, new), dnsfunc=dns)


def test_removing_list_unsubscribe_post_breaks_the_signature(  # type: ignore[no-untyped-def]
    signed: FrozenIssue, dns
) -> None:
    factory = MessageFactory(signed.ctx, signed.issue_id, signed.subject, signed.html, signed.text)
    data = factory.build(13, "reader@example.org", "").data
    stripped = re.sub(rb"List-Unsubscribe-Post: [^\r]*\r\n", b"", data)
    assert stripped != data
    assert not dkim.verify(stripped, dnsfunc=dns)


def test_build_single_is_signed_too(signed: FrozenIssue, dns) -> None:  # type: ignore[no-untyped-def]
    built = build_single(
        signed.ctx, "new@example.org", "Nia", "Confirm", "<p>Confirm</p>", "Confirm\n"
    )
    assert dkim.verify(built.data, dnsfunc=dns)


def test_wrong_public_key_fails(signed: FrozenIssue) -> None:
    _, other_public = rsa_key(1024)
    wrong = dns_stub({f"{SELECTOR}._domainkey.example.com": f"v=DKIM1; k=rsa; p={other_public}"})
    factory = MessageFactory(signed.ctx, signed.issue_id, signed.subject, signed.html, signed.text)
    assert not dkim.verify(factory.build(14, "r@example.org", "").data, dnsfunc=wrong)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a key at all", "RSA PRIVATE KEY"),
        (b"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n", "openssl rsa"),
        (b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n", "usable"),
    ],
)
def test_bad_key_files_fail_early(tmp_path: Path, content: bytes, message: str) -> None:
    key_file = tmp_path / "bad.pem"
    key_file.write_bytes(content)
    ctx = open_ctx(
        tmp_path, NEWSLETTER_DKIM_KEY_FILE=str(key_file), NEWSLETTER_DKIM_SELECTOR=SELECTOR
    )
    try:
        with pytest.raises(DkimKeyError, match=message):
            MessageFactory(ctx, 1, "Subject", "<p>x</p>", "x")
    finally:
        ctx.close()


def test_unsigned_without_settings(ctx: Context) -> None:
    factory = MessageFactory(ctx, 1, "Subject", "<p>x</p>", "x")
    assert not factory.signs
    assert b"DKIM-Signature" not in factory.build(1, "a@example.org", "").data
