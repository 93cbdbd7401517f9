"""Where bounces are read from: Maildir, mbox, ``.eml`` files, IMAP, POP3.

Every source yields :class:`Item` (a key for reports and the raw bytes) and is
told :meth:`Source.done` only after the caller has committed what the message
said, so a crash between the two re-reads a message (harmless: each message is
recorded once) rather than losing one.  What "done" means is the mailbox's own
idiom: a Maildir message moves to ``cur/`` flagged seen; an IMAP message is
flagged ``\\Seen`` and moved to a folder (default ``Processed``); a POP3 message
is deleted.  An mbox or ``.eml`` file is left as it is.  With ``dry_run`` a source
changes nothing at all (IMAP is even opened read-only).
"""

from __future__ import annotations

import imaplib
import mailbox
import os
import poplib
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["Item", "Source", "SourceError", "open_source"]

_TIMEOUT = 60.0


class SourceError(RuntimeError):
    """The source cannot be opened or read; ``str()`` is a one-line message."""


@dataclass(frozen=True, slots=True)
class Item:
    key: str  # message file path | mbox:N | imap:UID | pop3:UIDL
    raw: bytes


class Source(Protocol):
    def items(self) -> Iterator[Item]: ...
    def done(self, item: Item) -> None: ...
    def close(self) -> None: ...


def open_source(
    spec: str, *, dry_run: bool = False, ssl_context: ssl.SSLContext | None = None
) -> Source:
    """A path (Maildir, mbox, folder of ``.eml``, one ``.eml``) or an imap[s]/pop3[s] URL.

    ``ssl_context`` overrides the default (certificate-verifying) one for imaps/pop3s;
    tests pass one that trusts their own server's self-signed certificate.
    """
    scheme = urlsplit(spec).scheme.lower() if "://" in spec else ""
    if scheme in ("imap", "imaps"):
        return ImapSource(spec, dry_run=dry_run, ssl_context=ssl_context)
    if scheme in ("pop3", "pop3s", "pop", "pops"):
        return Pop3Source(spec, dry_run=dry_run, ssl_context=ssl_context)
    if scheme:
        raise SourceError(
            f"{spec.split('://')[0]}:// is not a bounce source (imap[s], pop3[s], or a path)"
        )
    path = Path(spec)
    if path.is_dir() and (path / "cur").is_dir() and (path / "new").is_dir():
        return MaildirSource(path, dry_run=dry_run)
    if path.is_dir():
        return FilesSource(sorted(p for p in path.iterdir() if p.suffix.lower() == ".eml"))
    if not path.is_file():
        raise SourceError(f"{spec}: no such file or folder")
    with path.open("rb") as handle:
        head = handle.read(5)
    if head == b"From ":
        return MboxSource(path)
    return FilesSource([path])


# --- files ------------------------------------------------------------------------------


class FilesSource:
    """``.eml`` files, read and left alone (re-reading them changes nothing)."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths = paths

    def items(self) -> Iterator[Item]:
        for path in self._paths:
            try:
                raw = path.read_bytes()
            except OSError as exc:
                raise SourceError(f"{path}: {exc.strerror or exc}") from None
            yield Item(str(path), raw)

    def done(self, item: Item) -> None:
        return None

    def close(self) -> None:
        return None


class MboxSource:
    """An mbox file, left alone; ``mbox:N`` counts from 1."""

    def __init__(self, path: Path) -> None:
        self._box = mailbox.mbox(path, create=False)

    def items(self) -> Iterator[Item]:
        for number, key in enumerate(self._box.iterkeys(), start=1):
            yield Item(f"mbox:{number}", self._box.get_bytes(key))

    def done(self, item: Item) -> None:
        return None

    def close(self) -> None:
        self._box.close()


class MaildirSource:
    """New and not-yet-seen messages; processed ones move to ``cur/`` with flag S.

    A message that cannot be read (permissions, vanished) is skipped and stays
    where it is, for the next scan or a human to look at.
    """

    def __init__(self, root: Path, *, dry_run: bool) -> None:
        self._root = root
        self._dry_run = dry_run
        self.unreadable: list[str] = []

    def items(self) -> Iterator[Item]:
        candidates = sorted((self._root / "new").iterdir())
        candidates += [p for p in sorted((self._root / "cur").iterdir()) if "S" not in _flags(p)]
        for path in candidates:
            if path.name.startswith("."):
                continue
            try:
                raw = path.read_bytes()
            except OSError:
                self.unreadable.append(str(path))
                continue
            yield Item(str(path), raw)

    def done(self, item: Item) -> None:
        if self._dry_run:
            return
        path = Path(item.key)
        base = path.name.split(":2,", 1)[0]
        flags = "".join(sorted(set(_flags(path)) | {"S"}))
        target = self._root / "cur" / f"{base}:2,{flags}"
        os.replace(path, target)

    def close(self) -> None:
        return None


def _flags(path: Path) -> str:
    return path.name.split(":2,", 1)[1] if ":2," in path.name else ""


# --- network mailboxes ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Account:
    secure: bool
    host: str
    port: int
    user: str
    password: str
    folder: str
    processed: str


def _account(url: str, plain_port: int, secure_port: int) -> _Account:
    parts = urlsplit(url)
    secure = parts.scheme.lower().endswith("s")
    if not parts.hostname or parts.username is None:
        raise SourceError(f"{_redact(url)}: expected SCHEME://user:password@host[:port]/FOLDER")
    try:
        port = parts.port or (secure_port if secure else plain_port)
    except ValueError:
        raise SourceError(f"{_redact(url)}: bad port") from None
    query = parse_qs(parts.query)
    folder = unquote(parts.path.lstrip("/")) or "INBOX"
    return _Account(
        secure=secure,
        host=parts.hostname,
        port=port,
        user=unquote(parts.username),
        password=unquote(parts.password or ""),
        folder=folder,
        processed=query.get("processed", ["Processed"])[0],
    )


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def _context(given: ssl.SSLContext | None) -> ssl.SSLContext:
    return given if given is not None else ssl.create_default_context()


class ImapSource:
    """Every message in the folder; processed ones flagged ``\\Seen`` and moved out."""

    def __init__(self, url: str, *, dry_run: bool, ssl_context: ssl.SSLContext | None) -> None:
        account = _account(url, 143, 993)
        self._account = account
        self._dry_run = dry_run
        where = f"{_redact(url)}"
        try:
            if account.secure:
                conn: imaplib.IMAP4 = imaplib.IMAP4_SSL(
                    account.host, account.port, ssl_context=_context(ssl_context), timeout=_TIMEOUT
                )
            else:
                conn = imaplib.IMAP4(account.host, account.port, timeout=_TIMEOUT)
            conn.login(account.user, account.password)
            status, _ = conn.select(_quote(account.folder), readonly=dry_run)
        except (OSError, imaplib.IMAP4.error) as exc:
            raise SourceError(f"{where}: {exc}") from None
        if status != "OK":
            raise SourceError(f"{where}: no folder {account.folder!r}")
        self._conn = conn
        self._moves = b"MOVE" in b" ".join(_capabilities(conn))
        self._created = False

    def items(self) -> Iterator[Item]:
        status, data = self._conn.uid("SEARCH", "UNDELETED")
        if status != "OK":
            raise SourceError(f"IMAP search failed: {data!r}")
        for uid in bytes(data[0] or b"").decode("ascii").split():
            status, fetched = self._conn.uid("FETCH", uid, "(BODY.PEEK[])")
            raw = next((p[1] for p in fetched if isinstance(p, tuple)), None)
            if status == "OK" and isinstance(raw, bytes):
                yield Item(f"imap:{uid}", raw)

    def done(self, item: Item) -> None:
        if self._dry_run:
            return
        uid = item.key.split(":", 1)[1]
        target = _quote(self._account.processed)
        if not self._created:
            self._conn.create(target)  # "already exists" is fine
            self._created = True
        self._conn.uid("STORE", uid, "+FLAGS", "(\\Seen)")
        if self._moves:
            status, data = self._conn.uid("MOVE", uid, target)
        else:
            status, data = self._conn.uid("COPY", uid, target)
            if status == "OK":
                self._conn.uid("STORE", uid, "+FLAGS", "(\\Deleted)")
                self._conn.expunge()
        if status != "OK":
            raise SourceError(f"IMAP could not move message {uid}: {data!r}")

    def close(self) -> None:
        try:
            self._conn.close()
            self._conn.logout()
        except (OSError, imaplib.IMAP4.error):
            pass  # closing a connection the server already dropped


def _capabilities(conn: imaplib.IMAP4) -> list[bytes]:
    status, data = conn.capability()
    return (data[0] or b"").split() if status == "OK" and data else []


def _quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Pop3Source:
    """Every message on the server; processed ones deleted (at QUIT, as POP3 does)."""

    def __init__(self, url: str, *, dry_run: bool, ssl_context: ssl.SSLContext | None) -> None:
        account = _account(url, 110, 995)
        self._dry_run = dry_run
        try:
            if account.secure:
                conn: poplib.POP3 = poplib.POP3_SSL(
                    account.host, account.port, context=_context(ssl_context), timeout=_TIMEOUT
                )
            else:
                conn = poplib.POP3(account.host, account.port, timeout=_TIMEOUT)
            conn.user(account.user)
            conn.pass_(account.password)
        except (OSError, poplib.error_proto) as exc:
            raise SourceError(f"{_redact(url)}: {exc}") from None
        self._conn = conn
        self._numbers: dict[str, int] = {}

    def items(self) -> Iterator[Item]:
        _, listing, _ = self._conn.uidl()
        for line in listing:
            number, uidl = line.decode("ascii", "replace").split(" ", 1)
            _, lines, _ = self._conn.retr(int(number))
            key = f"pop3:{uidl}"
            self._numbers[key] = int(number)
            yield Item(key, b"\r\n".join(lines) + b"\r\n")

    def done(self, item: Item) -> None:
        if not self._dry_run:
            self._conn.dele(self._numbers[item.key])

    def close(self) -> None:
        try:
            if self._dry_run:
                self._conn.rset()
            self._conn.quit()
        except (OSError, poplib.error_proto):
            pass  # the server dropped us: POP3 then deletes nothing, which is safe
