"""DKIM test keys made with ``cryptography`` (PKCS#1, PKCS#8, Ed25519) and a DNS stub."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

PKCS1 = serialization.PrivateFormat.TraditionalOpenSSL
PKCS8 = serialization.PrivateFormat.PKCS8


def rsa_pem(bits: int = 2048, form: serialization.PrivateFormat = PKCS8) -> tuple[bytes, str]:
    """(PEM private key, base64 SubjectPublicKeyInfo for the TXT record's ``p=``)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption())
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, base64.b64encode(der).decode()


def ed25519_pem() -> tuple[bytes, str]:
    """(PKCS#8 PEM private key, base64 raw public key, RFC 8463's ``p=``)."""
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, PKCS8, serialization.NoEncryption())
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return pem, base64.b64encode(raw).decode()


def write_keys(
    folder: Path, form: serialization.PrivateFormat = PKCS8
) -> tuple[dict[str, str], Callable[..., bytes | None]]:
    """Write an RSA and an Ed25519 key; (NEWSLETTER_DKIM_* variables, dkimpy dnsfunc)."""
    rsa_key, rsa_public = rsa_pem(2048, form)
    ed_key, ed_public = ed25519_pem()
    (folder / "dkim.pem").write_bytes(rsa_key)
    (folder / "dkim-ed.pem").write_bytes(ed_key)
    env = {
        "NEWSLETTER_DKIM_KEY_FILE": str(folder / "dkim.pem"),
        "NEWSLETTER_DKIM_SELECTOR": "rsa2026",
        "NEWSLETTER_DKIM_ED25519_KEY_FILE": str(folder / "dkim-ed.pem"),
        "NEWSLETTER_DKIM_ED25519_SELECTOR": "ed2026",
    }
    records = {
        "rsa2026._domainkey.example.com": f"v=DKIM1; k=rsa; p={rsa_public}",
        "ed2026._domainkey.example.com": f"v=DKIM1; k=ed25519; p={ed_public}",
    }
    return env, dns_stub(records)


def dns_stub(records: dict[str, str]) -> Callable[..., bytes | None]:
    """A ``dnsfunc`` for dkimpy: answers TXT look-ups from ``records``."""

    def lookup(name: bytes | str, timeout: float = 5) -> bytes | None:
        key = name.decode() if isinstance(name, bytes) else name
        value = records.get(key.rstrip("."))
        return value.encode() if value is not None else None

    return lookup


def verify_all(data: bytes, dns: Callable[..., bytes | None]) -> list[bool]:
    """dkimpy's verdict on every DKIM-Signature of ``data``, top first."""
    import dkim

    checker = dkim.DKIM(data)
    n = sum(1 for name, _ in checker.headers if name.lower() == b"dkim-signature")
    verdicts = []
    for i in range(n):
        try:
            verdicts.append(bool(checker.verify(idx=i, dnsfunc=dns)))
        except dkim.ValidationError:  # e.g. "body hash mismatch": not valid either
            verdicts.append(False)
    return verdicts
