"""The parser on real messages (the shared sample) and on our own fixtures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from newsletter.bounces.classify import classify
from newsletter.bounces.parse import analyse
from newsletter.bounces.sample import measure

ROOT = Path(__file__).resolve().parents[2]
SHARED_BOUNCES = ROOT.parent / "shared" / "fixtures" / "bounces"
OURS = ROOT / "tests" / "fixtures" / "bounces"


def _shared() -> Path:
    if SHARED_BOUNCES.is_dir():
        return SHARED_BOUNCES
    message = f"shared bounce sample missing: {SHARED_BOUNCES}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def test_shared_sample_meets_the_targets() -> None:
    figures = measure(_shared())
    assert figures.recipients_total >= 70 and figures.hard_total >= 30
    assert figures.softpolicy_total >= 20 and figures.nonbounce_total >= 2
    assert figures.recipient_rate >= 0.95, figures.misses
    assert figures.hard_rate >= 0.90, figures.misses
    assert figures.false_hard_rate <= 0.03, figures.misses
    assert figures.nonbounce_as_bounce == 0, figures.misses


def _expected() -> list[dict[str, str | None]]:
    return [json.loads(line) for line in (OURS / "expected.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("row", _expected(), ids=lambda r: str(r["file"]))
def test_own_fixture(row: dict[str, str | None]) -> None:
    findings = analyse((OURS / str(row["file"])).read_bytes())
    first = findings[0]
    assert (first.recipient, first.type, first.status) == (
        row["recipient"],
        row["type"],
        row["status"],
    )


def test_own_fixtures_cover_every_kind() -> None:
    kinds = {row["type"] for row in _expected()}
    assert kinds == {"hard", "soft", "policy", "complaint", "autoreply", "none"}


def test_quoted_original_never_classifies() -> None:
    """The exim fixture quotes a newsletter about spam and quotas: still a hard bounce."""
    (finding,) = analyse((OURS / "exim-text-hard.eml").read_bytes())
    assert finding.type == "hard"
    assert finding.message_id == "<9.77.ffeeddccbb1@news.example.org>"


def test_delayed_dsn_is_a_warning_not_a_bounce() -> None:
    (finding,) = analyse((OURS / "dsn-delayed.eml").read_bytes())
    assert (finding.type, finding.action) == ("none", "delayed")


@pytest.mark.parametrize(
    ("status", "text", "kind"),
    [
        ("5.0.0", "550 Requested action not taken: mailbox unavailable", "hard"),
        ("5.0.0", "550 5.0.0 Unknown user", "hard"),
        ("5.1.1", "550 5.1.1 The email account that you tried to reach does not exist", "hard"),
        ("5.1.7", "550 5.1.7 Invalid sender address", "policy"),
        ("5.1.8", "553 5.1.8 Domain of sender address does not exist", "policy"),
        ("5.7.1", "550 5.7.1 Message rejected as spam by Content Filtering", "policy"),
        ("5.7.26", "Unauthenticated email is not accepted due to domain's DMARC policy", "policy"),
        ("5.7.1", "554 5.7.1 <x@example.org>: Recipient address rejected: Access denied", "hard"),
        (
            "5.7.1",
            "554 5.7.1 <bounce@example.org>: Sender address rejected: Access denied",
            "policy",
        ),
        ("5.4.1", "550 5.4.1 Recipient address rejected: Access denied. AS(201806281)", "hard"),
        ("5.0.0", "550 Domain of sender address x.example does not exist", "policy"),
        ("5.0.0", "554 We do not accept mail from dynamic IPs", "policy"),
        ("5.0.0", "552 Recipient rejected: mailbox would exceed maximum allowed storage", "soft"),
        ("5.0.0", "550 sorry, no mailbox here by that name. (#5.7.17)", "hard"),
        ("5.2.2", "552 5.2.2 The email account that you tried to reach is over quota", "soft"),
        ("4.2.1", "421 4.2.1 Try again later", "soft"),
        ("5.0.0", "550 Something we have never heard of", "soft"),
        (None, "554 delivery error: This user doesn't have a yahoo.com account", "hard"),
        ("5.4.4", "Host or domain name not found", "hard"),
        ("4.2.0", "450 4.2.0 mailbox unavailable", "soft"),
        (None, "450 Requested action not taken: mailbox unavailable", "soft"),
    ],
)
def test_classify_reads_text_before_codes(status: str | None, text: str, kind: str) -> None:
    assert classify(status, text) == kind


def test_contradicting_notice_is_not_trusted_as_hard() -> None:
    assert classify("5.1.1", "550 5.1.1 User unknown", "Rejected: not enough disk space") == "soft"
