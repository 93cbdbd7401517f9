"""Mailbox sources against real files and a real Dovecot (IMAP, IMAPS, POP3, POP3S)."""

from __future__ import annotations

import imaplib
import mailbox
import poplib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from _dovecot import PASSWORD, USER, Dovecot, start_dovecot

from newsletter.bounces.sources import SourceError, open_source

OURS = Path(__file__).resolve().parents[1] / "fixtures" / "bounces"
FILES = ["dsn-hard-postfix.eml", "qmail-text-soft.eml", "arf-abuse.eml"]


def _raw(name: str) -> bytes:
    return (OURS / name).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _maildir(root: Path) -> Path:
    """A Maildir as an MTA leaves it (bytes exactly as delivered)."""
    for sub in ("tmp", "new", "cur"):
        (root / "bounces" / sub).mkdir(parents=True)
    for number, name in enumerate(FILES):
        (root / "bounces" / "new" / f"1764486131.M{number}P1.mx").write_bytes(_raw(name))
    return root / "bounces"


def _scan(spec: str, dry_run: bool = False, **kw: object) -> list[tuple[str, bytes]]:
    source = open_source(spec, dry_run=dry_run, **kw)  # type: ignore[arg-type]
    try:
        seen = []
        for item in source.items():
            seen.append((item.key, item.raw))
            source.done(item)
        return seen
    finally:
        source.close()


def test_maildir_moves_processed_to_cur_seen_and_leaves_unreadable(tmp_path: Path) -> None:
    root = _maildir(tmp_path)
    (root / "new" / "broken-link").symlink_to(tmp_path / "vanished")
    assert len(_scan(str(root), dry_run=True)) == 3
    assert len(list((root / "new").iterdir())) == 4  # dry run: nothing moved
    seen = _scan(str(root))
    assert sorted(raw for _, raw in seen) == sorted(_raw(n) for n in FILES)
    assert [p.name for p in (root / "new").iterdir()] == ["broken-link"]
    assert all(p.name.endswith(":2,S") for p in (root / "cur").iterdir())
    assert _scan(str(root)) == []  # processed messages are not offered again


def test_mbox_and_eml(tmp_path: Path) -> None:
    box = mailbox.mbox(tmp_path / "bounces.mbox")
    for name in FILES:
        box.add(mailbox.mboxMessage(_raw(name)))
    box.close()
    found = _scan(str(tmp_path / "bounces.mbox"))
    assert [key for key, _ in found] == ["mbox:1", "mbox:2", "mbox:3"]
    assert b"Feedback-Type: abuse" in found[2][1]
    single = _scan(str(OURS / "arf-abuse.eml"))
    assert single == [(str(OURS / "arf-abuse.eml"), (OURS / "arf-abuse.eml").read_bytes())]
    assert len(_scan(str(OURS))) == len(list(OURS.glob("*.eml")))


def test_bad_sources_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        open_source(str(tmp_path / "nope"))
    with pytest.raises(SourceError, match="not a bounce source"):
        open_source("ftp://x@y/z")


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    # Not under pytest's tmp_path: that is private (0700) and dovecot's own users
    # (auth, mail) must be able to reach the passwd file and the mail store.
    root = Path(tempfile.mkdtemp(prefix="newsletter-dovecot-"))
    root.chmod(0o755)
    try:
        server = start_dovecot(root)
        yield server
        server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _append(server: Dovecot) -> None:
    conn = imaplib.IMAP4("127.0.0.1", server.imap)
    conn.login(USER, PASSWORD)
    for name in FILES:
        conn.append("INBOX", None, None, _raw(name))
    conn.logout()


def _folder(server: Dovecot, folder: str) -> list[bytes]:
    conn = imaplib.IMAP4("127.0.0.1", server.imap)
    conn.login(USER, PASSWORD)
    conn.select(f'"{folder}"', readonly=True)
    _, data = conn.uid("SEARCH", "ALL")
    flags = []
    for uid in (data[0] or b"").split():
        _, fetched = conn.uid("FETCH", uid, "(FLAGS)")
        flags.append(fetched[0] if isinstance(fetched[0], bytes) else b"")
    conn.logout()
    return flags


@pytest.mark.parametrize("scheme", ["imap", "imaps"])
def test_imap_flags_and_moves_processed(dovecot: Dovecot, scheme: str) -> None:
    _append(dovecot)
    context = dovecot.ssl_context() if scheme == "imaps" else None
    dry = _scan(dovecot.url(scheme), dry_run=True, ssl_context=context)
    assert [key.split(":")[0] for key, _ in dry] == ["imap"] * 3
    assert len(_folder(dovecot, "INBOX")) == 3
    seen = _scan(dovecot.url(scheme), ssl_context=context)
    assert sorted(raw for _, raw in seen) == sorted(_raw(n) for n in FILES)
    assert _folder(dovecot, "INBOX") == []
    processed = _folder(dovecot, "Processed")
    assert len(processed) == 3 and all(b"\\Seen" in f for f in processed)


def test_imaps_refuses_an_untrusted_certificate(dovecot: Dovecot) -> None:
    with pytest.raises(SourceError, match="CERTIFICATE_VERIFY_FAILED"):
        open_source(dovecot.url("imaps"))


def test_imap_bad_password_is_one_line(dovecot: Dovecot) -> None:
    with pytest.raises(SourceError) as caught:
        open_source(f"imap://{USER}:wrong@127.0.0.1:{dovecot.imap}/INBOX")
    assert "wrong" not in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("scheme", ["pop3", "pop3s"])
def test_pop3_deletes_processed(dovecot: Dovecot, scheme: str) -> None:
    _append(dovecot)
    context = dovecot.ssl_context() if scheme == "pop3s" else None
    assert len(_scan(dovecot.url(scheme), dry_run=True, ssl_context=context)) == 3
    seen = _scan(dovecot.url(scheme), ssl_context=context)
    assert sorted(raw for _, raw in seen) == sorted(_raw(n) for n in FILES)
    conn = poplib.POP3("127.0.0.1", dovecot.pop3)
    conn.user(USER)
    conn.pass_(PASSWORD)
    assert conn.stat()[0] == 0
    conn.quit()
