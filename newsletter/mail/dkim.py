"""DKIM signing (dkimpy), rsa-sha256, covering the headers RFC 8058 needs signed.

dkimpy's default header list leaves out ``List-Unsubscribe-Post``; RFC 8058 says a
one-click unsubscribe is only honoured when both List-Unsubscribe headers are
covered by a valid DKIM signature, so the list is explicit here.  Signing is an
RSA private-key operation per message (about a millisecond or more), which is why
it is the one per-recipient step outside the 100 µs budget of the unsigned path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import Settings

SIGNED_HEADERS: tuple[bytes, ...] = (
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"list-id",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"mime-version",
    b"content-type",
)
# Each name listed twice ("over-signing"): the second entry signs the absence of a
# further instance, so a replayed copy with one more Subject or List-Unsubscribe
# prepended (the one mail clients show) no longer verifies.
_OVERSIGNED = [name for name in SIGNED_HEADERS for _ in range(2)]
CANONICALIZE = (b"relaxed", b"relaxed")


class DkimKeyError(ValueError):
    """The configured key file cannot be used; ``str()`` says why."""


@dataclass(frozen=True)
class DkimSigner:
    selector: bytes
    domain: bytes
    private_key: bytes

    @classmethod
    def load(cls, key_file: Path, selector: str, domain: str) -> DkimSigner:
        """Read and check the key once, so a bad key fails before the first send."""

        from dkim.crypto import UnparsableKeyError, parse_pem_private_key

        try:
            pem = key_file.read_bytes()
        except OSError as exc:
            raise DkimKeyError(f"DKIM key file {key_file}: {exc.strerror}") from None
        if b"BEGIN RSA PRIVATE KEY" not in pem:
            raise DkimKeyError(
                f"DKIM key file {key_file}: expected a PEM 'RSA PRIVATE KEY' (PKCS#1); "
                "convert with: openssl rsa -in key.pem -traditional -out dkim.pem"
            )
        try:
            parse_pem_private_key(pem.replace(b"\r\n", b"\n"))
        except (UnparsableKeyError, ValueError, IndexError) as exc:
            raise DkimKeyError(f"DKIM key file {key_file}: not a usable RSA key ({exc})") from None
        return cls(selector.encode("ascii"), domain.encode("ascii"), pem)

    @classmethod
    def from_settings(cls, settings: Settings) -> DkimSigner | None:
        """The signer when NEWSLETTER_DKIM_KEY_FILE and _SELECTOR are set, else None."""
        if settings.dkim_key_file is None or settings.dkim_selector is None:
            return None
        return cls.load(settings.dkim_key_file, settings.dkim_selector, settings.sender_domain)

    def sign(self, data: bytes) -> bytes:
        """``data`` with a ``DKIM-Signature`` header in front."""

        import dkim

        signature = dkim.sign(
            data,
            self.selector,
            self.domain,
            self.private_key,
            canonicalize=CANONICALIZE,
            signature_algorithm=b"rsa-sha256",
            include_headers=_OVERSIGNED,
            linesep=b"\r\n",
        )
        assert isinstance(signature, bytes)
        return signature + data
