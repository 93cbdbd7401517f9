"""The Maildir outbox, exactly: the file it writes, the outcomes it returns, its refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from newsletter.delivery.outbox import MaildirOutbox
from newsletter.delivery.outcome import Outcome, SendOutcome

FROM = "news@example.com"
DATA = b"From: news@example.com\r\nTo: a@example.org\r\nSubject: hi\r\n\r\nline one\r\nline two\r\n"


def test_a_message_becomes_one_lf_file_with_the_envelope_prepended(tmp_path: Path) -> None:
    folder = tmp_path / "outbox"
    box = MaildirOutbox(folder)
    assert box.path == folder
    assert box.description == f"Maildir {folder}"
    assert box.concurrency == 1
    assert sorted(p.name for p in folder.iterdir()) == ["cur", "new", "tmp"]
    out = box.send(FROM, "a@example.org", DATA)
    box.close()
    files = list((folder / "new").iterdir())
    assert len(files) == 1
    assert out == SendOutcome(Outcome.SENT, 250, f"saved as {files[0].name}")
    assert files[0].read_bytes() == (
        b"Return-Path: <news@example.com>\nDelivered-To: a@example.org\n"
        b"From: news@example.com\nTo: a@example.org\nSubject: hi\n\nline one\nline two\n"
    )


@pytest.mark.parametrize(
    ("envelope_from", "recipient"),
    [
        (FROM, "a@example.org\r"),
        (FROM, "a@example.org\nBcc: b@example.org"),
        ("news@example.com\r", "a@example.org"),
        ("news@example.com\nX: y", "a@example.org"),
    ],
)
def test_control_characters_in_an_address_write_nothing(
    tmp_path: Path, envelope_from: str, recipient: str
) -> None:
    box = MaildirOutbox(tmp_path / "outbox")
    out = box.send(envelope_from, recipient, DATA)
    box.close()
    assert out == SendOutcome(Outcome.FAILED, None, "control characters in an address")
    assert list((tmp_path / "outbox" / "new").iterdir()) == []


def test_a_write_that_fails_is_a_retry_naming_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "outbox"
    box = MaildirOutbox(folder)
    shutil.rmtree(folder / "tmp")  # the Maildir's tmp/ is gone: the write cannot start
    out = box.send(FROM, "a@example.org", DATA)
    assert out.outcome is Outcome.RETRY
    assert out.code is None
    assert out.response.startswith(f"writing to {folder}: [Errno 2] No such file or directory: ")
    assert str(folder / "tmp") in out.response
