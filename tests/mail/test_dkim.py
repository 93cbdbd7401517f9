"""DKIM on OpenSSL: rsa-sha256 and ed25519-sha256 signatures, verified by dkimpy via a DNS stub."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest
from _digest_support import FrozenIssue, fixture_digest, open_ctx, parse_strict
from _dkim_support import PKCS1, PKCS8, dns_stub, ed25519_pem, rsa_pem, verify_all, write_keys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from newsletter.context import Context
from newsletter.mail.dkim import SIGNED_HEADERS, BodyHasher, DkimKeyError, DkimSigner, load_key
from newsletter.mail.message import MessageFactory, build_single


@pytest.fixture(scope="module", params=["pkcs1", "pkcs8"])
def signed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[FrozenIssue, object]]:
    folder = tmp_path_factory.mktemp(f"dkim-{request.param}")
    env, dns = write_keys(folder, PKCS1 if request.param == "pkcs1" else PKCS8)
    ctx = open_ctx(folder, **env)
    yield fixture_digest(ctx), dns
    ctx.close()


def _tags(data: bytes, index: int) -> dict[str, str]:
    values = parse_strict(data).get_all("DKIM-Signature") or []
    raw = re.sub(r"\s+", "", str(values[index]))
    return dict(tag.split("=", 1) for tag in raw.split(";") if tag)


def _factory(issue: FrozenIssue) -> MessageFactory:
    return MessageFactory(issue.ctx, issue.issue_id, issue.subject, issue.html, issue.text)


def test_both_signatures_verify(signed) -> None:  # type: ignore[no-untyped-def]
    issue, dns = signed
    factory = _factory(issue)
    assert factory.signs
    built = factory.build(11, "reader@example.org", "Zoë   Ωmega")
    data = built.data
    assert data.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; ")
    assert verify_all(data, dns) == [True, True]
    rsa_tags, ed_tags = _tags(data, 0), _tags(data, 1)
    assert (rsa_tags["a"], ed_tags["a"]) == ("rsa-sha256", "ed25519-sha256")
    assert (rsa_tags["s"], ed_tags["s"]) == ("rsa2026", "ed2026")
    for tags in (rsa_tags, ed_tags):
        assert tags["d"] == "example.com" and tags["c"] == "relaxed/relaxed"
        signed_names = tags["h"].lower().split(":")
        for name in SIGNED_HEADERS:  # each over-signed
            assert signed_names.count(name.decode()) == 2
    assert rsa_tags["bh"] == ed_tags["bh"]  # one body hash for both
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    assert not parse_strict(data).defects


def test_piecewise_body_hash_equals_dkimpy_canonicalisation(signed) -> None:  # type: ignore[no-untyped-def]
    """The per-issue precompiled body hash is the hash of the relaxed finished body."""
    from dkim.canonicalization import Relaxed

    issue, _ = signed
    factory = _factory(issue)
    hasher = factory._compiled.hasher()
    assert hasher.exact
    data = factory.build(12, "a@example.org", "Ann  B").data
    body = data.split(b"\r\n\r\n", 1)[1]
    import base64
    import hashlib

    expected = base64.b64encode(hashlib.sha256(Relaxed.canonicalize_body(body)).digest()).decode()
    assert _tags(data, 0)["bh"] == expected


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
        (b"\r\nSubject: ", b"\r\nSubject: Re: "),
        (b"To: reader@example.org", b"To: other@example.org"),
        (b"Read the story", b"Read the STORY"),
    ],
)
def test_tampering_breaks_both_signatures(signed, old: bytes, new: bytes) -> None:  # type: ignore[no-untyped-def]
    issue, dns = signed
    data = _factory(issue).build(12, "reader@example.org", "").data
    assert verify_all(data, dns) == [True, True]
    assert verify_all(_tamper(data, old, new), dns) == [False, False]


def test_prepended_or_removed_headers_break_both(signed) -> None:  # type: ignore[no-untyped-def]
    issue, dns = signed
    data = _factory(issue).build(13, "reader@example.org", "").data
    stripped = re.sub(rb"List-Unsubscribe-Post: [^\r]*\r\n", b"", data)
    assert stripped != data
    assert verify_all(stripped, dns) == [False, False]
    head, _, rest = data.partition(b"From: ")
    extra = head + b"List-Unsubscribe: <https://evil.test/u>\r\nFrom: " + rest
    assert verify_all(extra, dns) == [False, False]  # over-signed: no second instance


def test_build_single_is_signed_too(signed) -> None:  # type: ignore[no-untyped-def]
    issue, dns = signed
    built = build_single(
        issue.ctx, "new@example.org", "Nia", "Confirm", "<p>Confirm</p>", "Confirm\n"
    )
    assert verify_all(built.data, dns) == [True, True]


def test_arbitrary_bytes_are_canonicalised_generically(tmp_path: Path) -> None:
    """Bytes not from a template (folded headers, WSP runs, trailing blank lines)."""
    pem, public = rsa_pem(2048, PKCS1)
    (tmp_path / "k.pem").write_bytes(pem)
    signer = DkimSigner([load_key(tmp_path / "k.pem", "rsa", "s1", "example.com")])
    msg = (
        b"From: a@example.com\r\nTo: b@example.org\r\nSubject:  hi   there\r\n\tfolded\r\n"
        b"\r\nbody \t line  \r\n  indented\r\n\r\n\r\n"
    )
    dns = dns_stub({"s1._domainkey.example.com": f"v=DKIM1; k=rsa; p={public}"})
    assert dkim.verify(signer.sign(msg), dnsfunc=dns)


def test_body_hasher_falls_back_when_a_slot_is_not_on_a_line_boundary() -> None:
    assert BodyHasher([b"a\r\n", 0, b"=\r\nend\r\n"]).exact
    assert not BodyHasher([b"a ", 0, b"=\r\nend\r\n"]).exact
    assert not BodyHasher([b"a\r\n", 0, b"\r\nend\r\n"]).exact
    assert not BodyHasher([b"a\r\n", 0]).exact


def test_wrong_public_key_fails(signed) -> None:  # type: ignore[no-untyped-def]
    issue, _ = signed
    _, other_rsa = rsa_pem(1024)
    _, other_ed = ed25519_pem()
    wrong = dns_stub(
        {
            "rsa2026._domainkey.example.com": f"v=DKIM1; k=rsa; p={other_rsa}",
            "ed2026._domainkey.example.com": f"v=DKIM1; k=ed25519; p={other_ed}",
        }
    )
    assert verify_all(_factory(issue).build(14, "r@example.org", "").data, wrong) == [False, False]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")
def test_openssl_genpkey_key_is_accepted(tmp_path: Path) -> None:
    """The key OpenSSL 3 writes by default (PKCS#8, "BEGIN PRIVATE KEY")."""
    key_file = tmp_path / "genpkey.pem"
    subprocess.run(
        [
            "openssl",
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            str(key_file),
        ],
        check=True,
        capture_output=True,
    )
    assert key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    key = load_key(key_file, "rsa", "s1", "example.com")
    dns = dns_stub({key.record_name: key.record_value})
    data = DkimSigner([key]).sign(b"From: a@example.com\r\nSubject: x\r\n\r\nhello\r\n")
    assert dkim.verify(data, dnsfunc=dns)


def test_short_rsa_key_warns(tmp_path: Path) -> None:
    pem, _ = rsa_pem(1024)
    (tmp_path / "k.pem").write_bytes(pem)
    signer = DkimSigner([load_key(tmp_path / "k.pem", "rsa", "s1", "example.com")])
    assert len(signer.warnings) == 1 and "1024 bits" in signer.warnings[0]


def _encrypted() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, PKCS8, serialization.BestAvailableEncryption(b"secret")
    )


@pytest.mark.parametrize(
    ("make", "kind", "message"),
    [
        (lambda: b"not a key at all", "rsa", "not a PEM private key"),
        (
            lambda: b"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n",
            "rsa",
            "not a PEM",
        ),
        (_encrypted, "rsa", "passphrase-protected"),
        (lambda: ed25519_pem()[0], "rsa", "expected an RSA key"),
        (lambda: rsa_pem(2048)[0], "ed25519", "expected an Ed25519 key"),
    ],
)
def test_bad_key_files_fail_early(tmp_path: Path, make, kind: str, message: str) -> None:  # type: ignore[no-untyped-def]
    key_file = tmp_path / "bad.pem"
    key_file.write_bytes(make())
    with pytest.raises(DkimKeyError, match=message) as caught:
        load_key(key_file, kind, "s1", "example.com")
    assert "\n" not in str(caught.value)


def test_bad_key_fails_when_the_factory_is_made(tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_bytes(b"junk")
    ctx = open_ctx(
        tmp_path, NEWSLETTER_DKIM_KEY_FILE=str(tmp_path / "bad.pem"), NEWSLETTER_DKIM_SELECTOR="s1"
    )
    try:
        with pytest.raises(DkimKeyError):
            MessageFactory(ctx, 1, "Subject", "<p>x</p>", "x")
    finally:
        ctx.close()


def test_unsigned_without_settings(ctx: Context) -> None:
    factory = MessageFactory(ctx, 1, "Subject", "<p>x</p>", "x")
    assert not factory.signs
    assert b"DKIM-Signature" not in factory.build(1, "a@example.org", "").data


def test_signed_bulk_send_verifies_every_message(tmp_path: Path, servers) -> None:  # type: ignore[no-untyped-def]
    """A send signs in the connection worker threads (4 at once); every copy verifies."""
    from _delivery_support import add_subscribers, make_issue

    from newsletter import delivery

    server = servers()
    env, dns = write_keys(tmp_path)
    ctx = open_ctx(tmp_path, NEWSLETTER_SMTP_URL=server.url, **env)
    try:
        add_subscribers(ctx, 60)
        summary = delivery.send_issue(ctx, make_issue(ctx))
        assert summary.ok and summary.run.sent == 60
        verdicts = [verify_all(m.data, dns) for m in server.messages]
        assert verdicts == [[True, True]] * 60
        assert len({m.message["Message-ID"] for m in server.messages}) == 60
    finally:
        ctx.close()
