"""DKIM signing on OpenSSL (``cryptography``): rsa-sha256 and ed25519-sha256 (RFC 8463).

Relaxed/relaxed canonicalisation (RFC 6376 3.4.2, 3.4.4) over an explicit header set:
RFC 8058 only honours a one-click unsubscribe when both List-Unsubscribe headers are
covered by a valid signature, and every name is listed twice ("over-signing": the
second entry signs the absence of a further instance, so a replayed copy with one
more Subject or List-Unsubscribe prepended no longer verifies).

Speed is the point of this module (issue 12).  The message bytes come from a
precompiled template (``message.py``), so the body is canonicalised piece-wise: the
template's fixed pieces once per issue (:class:`BodyHasher`), the few per-recipient
values once per message, and SHA-256 runs over those pieces; no regular expression
ever passes over a whole message.  The header side only looks at the header block,
and canonicalises only the signed fields.  The private-key operation is the one
costly step, and ``cryptography`` releases the GIL while it runs (pyca/cryptography
#14370 for RSA, #15164 for Ed25519; ``bench/bench_dkim.py`` measures two threads
signing at about 1.9x one), so threads sign in parallel (``message.BuiltMessage``)
and no process pool is needed.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # cryptography is imported where keys are loaded, not at CLI start-up
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

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
_OVERSIGNED = [name for name in SIGNED_HEADERS for _ in range(2)]


def _fold_names(names: list[bytes], width: int = 72) -> str:
    """``h=`` folded after a colon so that no header line runs past ~76 octets."""
    lines = [" h="]
    for i, name in enumerate(names):
        item = name.decode() + (":" if i < len(names) - 1 else ";")
        if len(lines[-1]) + len(item) > width:
            lines.append(" ")
        lines[-1] += item
    return "\r\n".join(lines)


_H_TAG = _fold_names(_OVERSIGNED)
RSA_MIN_BITS, RSA_WEAK_BITS, RSA_MAX_BITS = 1024, 2048, 4096

_WSP_RUN = re.compile(rb"[\t ]+")
_WSP_EOL = re.compile(rb"[\t ]+\r\n")
_UNFOLD = re.compile(rb"\r?\n")


class DkimKeyError(ValueError):
    """The configured key cannot be used; ``str()`` is one line saying why and what to do."""


@dataclass(frozen=True)
class DkimKey:
    """One loaded private key with its selector: one DKIM-Signature per message."""

    algorithm: str  # "rsa-sha256" | "ed25519-sha256"
    selector: str
    domain: str
    key: RSAPrivateKey | Ed25519PrivateKey = field(repr=False)
    pem: bytes = field(repr=False)
    bits: int

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def record_value(self) -> str:
        """The TXT value to publish: ``v=DKIM1; k=rsa|ed25519; p=<public key>``."""
        from cryptography.hazmat.primitives import serialization

        public = self.key.public_key()
        if self.algorithm == "ed25519-sha256":
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
        der = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def load_key(path: Path, kind: str, selector: str, domain: str) -> DkimKey:
    """Read a PKCS#1 or PKCS#8 PEM key of ``kind`` ("rsa" | "ed25519"), or DkimKeyError."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise DkimKeyError(f"DKIM key file {path}: {exc.strerror or exc}") from None
    if b"ENCRYPTED" in pem:
        raise DkimKeyError(
            f"DKIM key file {path}: the key is passphrase-protected; store it unencrypted "
            f"(mode 0600), e.g. openssl pkey -in {path.name} -out dkim.pem"
        )
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:  # "password was not given but private key is encrypted"
        raise DkimKeyError(f"DKIM key file {path}: the key is passphrase-protected") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        first = (str(exc).split(". See ")[0].splitlines() or ["unreadable"])[0]
        raise DkimKeyError(
            f"DKIM key file {path}: not a PEM private key (PKCS#1 or PKCS#8): {first[:80]}"
        ) from None
    if kind == "rsa":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise DkimKeyError(f"DKIM key file {path}: expected an RSA key")
        bits = key.key_size
        if not RSA_MIN_BITS <= bits <= RSA_MAX_BITS:
            raise DkimKeyError(
                f"DKIM key file {path}: RSA keys of {RSA_MIN_BITS}-{RSA_MAX_BITS} bits are "
                f"accepted, this one has {bits}"
            )
        return DkimKey("rsa-sha256", selector, domain, key, pem, bits)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise DkimKeyError(f"DKIM key file {path}: expected an Ed25519 key")
    return DkimKey("ed25519-sha256", selector, domain, key, pem, 256)


# --- canonicalisation -----------------------------------------------------------------


def relax_piece(piece: bytes) -> bytes:
    """Relaxed body rules inside a piece: WSP before CRLF dropped, WSP runs made one SP.

    Trailing empty lines are not touched (only the body's very end has those).
    """
    if b"\t" not in piece and b"  " not in piece and b" \r\n" not in piece:
        return piece
    return _WSP_RUN.sub(b" ", _WSP_EOL.sub(b"\r\n", piece))


def _strip_trailing_lines(body: bytes) -> bytes:
    """RFC 6376 3.4.4: no empty lines at the end; a non-empty body ends with one CRLF."""
    end = len(body)
    while body.endswith(b"\r\n", 0, end):
        end -= 2
    return body[:end] + b"\r\n" if end else b""


def canonical_body(body: bytes) -> bytes:
    """The whole relaxed body, for bytes that did not come from a template."""
    return _strip_trailing_lines(relax_piece(body))


class BodyHasher:
    """The relaxed body hash of a template: fixed pieces canonicalised once per issue.

    ``pieces`` alternate fixed bytes and value slots (ints into the values tuple).
    The piece-wise result equals canonicalising the finished body as long as every
    slot sits on a line boundary the way message.py places them (a fixed piece ending
    in CRLF before it, one starting with neither WSP nor a line break after it) and
    the body ends with a fixed piece; ``exact`` says whether that holds.
    """

    def __init__(self, pieces: Sequence[bytes | int]) -> None:
        merged: list[bytes | int] = []
        for piece in pieces:
            if isinstance(piece, bytes) and merged and isinstance(merged[-1], bytes):
                merged[-1] += piece
            else:
                merged.append(piece)
        self.exact = bool(merged) and isinstance(merged[-1], bytes)
        for i, piece in enumerate(merged):
            if isinstance(piece, int):
                before, after = merged[i - 1] if i else b"", merged[i + 1 : i + 2]
                ok_before = isinstance(before, bytes) and before.endswith(b"\r\n")
                ok_after = bool(after) and isinstance(after[0], bytes)
                if ok_after and isinstance(after[0], bytes):
                    ok_after = after[0][:1] not in (b" ", b"\t", b"\r", b"\n", b"")
                self.exact = self.exact and ok_before and ok_after
        out: list[bytes | int] = [relax_piece(p) if isinstance(p, bytes) else p for p in merged]
        if self.exact:
            last = out[-1]
            assert isinstance(last, bytes)
            out[-1] = _strip_trailing_lines(last)
        self._pieces = out

    def digest(self, values: Sequence[bytes]) -> bytes:
        """One SHA-256 over the joined pieces: one GIL release instead of one per piece."""
        body = b"".join(p if isinstance(p, bytes) else relax_piece(values[p]) for p in self._pieces)
        return hashlib.sha256(body).digest()


def _header_fields(block: bytes) -> list[tuple[bytes, bytes]]:
    """(lower-case name, raw value) per field of a CRLF header block, in order."""
    fields: list[tuple[bytes, bytes]] = []
    for line in block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\r\n" + line)
        else:
            name, _, value = line.partition(b":")
            fields.append((name.rstrip().lower(), value))
    return fields


def _relaxed_header(name: bytes, value: bytes) -> bytes:
    return name + b":" + _WSP_RUN.sub(b" ", _UNFOLD.sub(b"", value)).strip(b" \t")


def _signed_headers(block: bytes) -> bytes:
    """The canonical form of the over-signed header list, each instance bottom-up."""
    by_name: dict[bytes, list[bytes]] = {}
    for name, value in _header_fields(block):
        if name in _SIGNED_SET:
            by_name.setdefault(name, []).append(value)
    out: list[bytes] = []
    for name in SIGNED_HEADERS:
        found = by_name.get(name, ())
        for value in list(reversed(found))[:2]:  # over-signed: two entries each
            out.append(_relaxed_header(name, value) + b"\r\n")
    return b"".join(out)


_SIGNED_SET = frozenset(SIGNED_HEADERS)


def _fold_b64(value: str, first: int) -> str:
    chunks = [value[:first]] + [value[i : i + 72] for i in range(first, len(value), 72)]
    return "\r\n ".join(chunk for chunk in chunks if chunk)


# --- the signer -----------------------------------------------------------------------


class DkimSigner:
    """One message in, the same bytes with one DKIM-Signature per configured key out."""

    def __init__(self, keys: Sequence[DkimKey]) -> None:
        if not keys:
            raise ValueError("a signer needs at least one key")
        self.keys = tuple(keys)
        self.warnings = [
            f"the DKIM key {k.record_name} has {k.bits} bits; receivers expect at least "
            f"{RSA_WEAK_BITS} (newsletter dkim keygen makes one)"
            for k in self.keys
            if k.algorithm == "rsa-sha256" and k.bits < RSA_WEAK_BITS
        ]

    @classmethod
    def from_settings(cls, settings: Settings) -> DkimSigner | None:
        """The signer for NEWSLETTER_DKIM_KEY_FILE and/or _ED25519_KEY_FILE, else None.

        Raises :class:`DkimKeyError` for a key that cannot be used: callers check this
        before anything is recorded (see ``cli.check_signing``).
        """
        domain = settings.sender_domain
        keys: list[DkimKey] = []
        if settings.dkim_key_file is not None and settings.dkim_selector is not None:
            keys.append(_cached_key(settings.dkim_key_file, "rsa", settings.dkim_selector, domain))
        ed_file, ed_selector = settings.dkim_ed25519_key_file, settings.dkim_ed25519_selector
        if ed_file is not None and ed_selector is not None:
            keys.append(_cached_key(ed_file, "ed25519", ed_selector, domain))
        return cls(keys) if keys else None

    def sign(self, data: bytes, body_hash: bytes | None = None) -> bytes:
        """``data`` with the DKIM-Signature headers in front.

        ``body_hash``: the relaxed SHA-256 body hash when the caller knows it
        (:class:`BodyHasher`); otherwise the body is canonicalised here.
        """
        end = data.find(b"\r\n\r\n")
        if end < 0:
            raise ValueError("a message needs a header block and a body")
        if body_hash is None:
            body_hash = hashlib.sha256(canonical_body(data[end + 4 :])).digest()
        signed = _signed_headers(data[: end + 2])
        bh = base64.b64encode(body_hash).decode()
        stamp = int(time.time())
        heads: list[str] = []
        inputs: list[bytes] = []
        for key in self.keys:
            head = (
                f"DKIM-Signature: v=1; a={key.algorithm}; c=relaxed/relaxed; d={key.domain};"
                f"\r\n s={key.selector}; t={stamp};\r\n{_H_TAG}\r\n bh={bh};\r\n b="
            )
            heads.append(head)
            value = head.encode("ascii").partition(b":")[2]
            inputs.append(signed + _relaxed_header(b"dkim-signature", value))
        signatures = sign_inputs(self.keys, inputs)  # releases the GIL: threads sign at once
        out = [
            head + _fold_b64(base64.b64encode(sig).decode(), 70) + "\r\n"
            for head, sig in zip(heads, signatures, strict=True)
        ]
        return "".join(out).encode("ascii") + data


def sign_inputs(keys: Sequence[DkimKey], inputs: Sequence[bytes]) -> list[bytes]:
    """The private-key operations: RSASSA-PKCS1-v1_5/SHA-256, or Ed25519 over SHA-256."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    out: list[bytes] = []
    for key, data in zip(keys, inputs, strict=True):
        if isinstance(key.key, rsa.RSAPrivateKey):
            out.append(key.key.sign(data, padding.PKCS1v15(), hashes.SHA256()))
        else:  # RFC 8463: PureEdDSA over the SHA-256 of the header hash input
            out.append(key.key.sign(hashlib.sha256(data).digest()))
    return out


_KEYS: dict[tuple[str, float, str, str, str], DkimKey] = {}


def _cached_key(path: Path, kind: str, selector: str, domain: str) -> DkimKey:
    """Parse each key file once per process (RSA key checks take milliseconds)."""
    try:
        mtime = path.stat().st_mtime
    except OSError as exc:
        raise DkimKeyError(f"DKIM key file {path}: {exc.strerror or exc}") from None
    cache_key = (str(path.resolve()), mtime, kind, selector, domain)
    if cache_key not in _KEYS:
        _KEYS[cache_key] = load_key(path, kind, selector, domain)
    return _KEYS[cache_key]
