"""The transport's pure parts, with exact values: classification, URLs, dot-stuffing, relays."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from newsletter.config import Settings
from newsletter.delivery.outbox import MaildirOutbox
from newsletter.delivery.transport import (
    SET_ASIDE_FIRST,
    SET_ASIDE_MAX,
    STREAK_421,
    Outcome,
    RelayPool,
    SendOutcome,
    SMTPPool,
    SMTPTarget,
    _closing,
    _decode,
    _describe,
    _dot_stuff,
    _Refused,
    _Relay,
    _seconds_to_midnight,
    classify,
    is_quota_refusal,
    open_transport,
)


@pytest.mark.parametrize(
    ("code", "text", "stage", "expected"),
    [
        # 2xx, exactly 200..299, whatever the words
        (200, "ok", "data", Outcome.SENT),
        (299, "ok", "rcpt", Outcome.SENT),
        (250, "daily sending quota exceeded", "data", Outcome.SENT),
        (199, "odd", "data", Outcome.RETRY),
        (300, "odd", "data", Outcome.RETRY),
        # a daily quota wins over the code from 400 up, never below
        (400, "daily sending quota exceeded", "data", Outcome.QUOTA),
        (399, "daily sending quota exceeded", "data", Outcome.RETRY),
        (
            550,
            "5.1.90 you have reached your daily limit for message recipients",
            "rcpt",
            Outcome.QUOTA,
        ),
        (421, "4.7.0 Daily sending quota exceeded", "session", Outcome.QUOTA),
        # 4xx and 500 as the first permanent code
        (400, "4.0.0 later", "data", Outcome.RETRY),
        (499, "odd", "data", Outcome.RETRY),
        (500, "5.1.1 no such user", "rcpt", Outcome.BOUNCE),
        (500, "5.5.2 syntax error", "data", Outcome.FAILED),
        # session and MAIL: about us, never the reader
        (550, "5.1.1 no such user", "session", Outcome.POLICY),
        (550, "5.1.1 no such user", "mail", Outcome.POLICY),
        (554, "no service", "session", Outcome.POLICY),
        # the enhanced code decides at RCPT and DATA
        (550, "5.1.1 no such user", "rcpt", Outcome.BOUNCE),
        (550, "5.1.1 no such user", "data", Outcome.BOUNCE),
        (552, "5.2.2 mailbox full", "data", Outcome.BOUNCE),
        (550, "5.7.1 spam", "rcpt", Outcome.POLICY),
        (550, "5.7.1 spam", "data", Outcome.POLICY),
        (554, "5.6.0 content rejected", "data", Outcome.FAILED),
        (554, "5.3.4 too big", "rcpt", Outcome.FAILED),
        (550, "5.17.1 odd subject", "rcpt", Outcome.FAILED),
        (550, "5.1.1", "rcpt", Outcome.BOUNCE),
        # an enhanced code that is not a 5.x.y does not decide
        (550, "4.1.1 odd", "rcpt", Outcome.BOUNCE),
        (554, "4.7.1 odd", "data", Outcome.FAILED),
        (550, "2.1.1 odd", "data", Outcome.FAILED),
        (535, "4.7.8 odd", "data", Outcome.POLICY),
        (550, "x 5.1.1 not at the start", "data", Outcome.FAILED),
        # without one: authentication codes are policy, mailbox codes bounce at RCPT only
        (530, "authentication required", "data", Outcome.POLICY),
        (534, "mechanism too weak", "rcpt", Outcome.POLICY),
        (535, "authentication failed", "data", Outcome.POLICY),
        (538, "encryption required", "data", Outcome.POLICY),
        (531, "odd", "data", Outcome.FAILED),
        (550, "mailbox unavailable", "rcpt", Outcome.BOUNCE),
        (551, "user not local", "rcpt", Outcome.BOUNCE),
        (553, "mailbox name not allowed", "rcpt", Outcome.BOUNCE),
        (552, "storage exceeded", "rcpt", Outcome.FAILED),
        (554, "transaction failed", "rcpt", Outcome.FAILED),
        (550, "mailbox unavailable", "data", Outcome.FAILED),
        (550, "mailbox unavailable", "Rcpt", Outcome.FAILED),
        (550, "5.1.1 no such user", "Session", Outcome.BOUNCE),
        (550, "5.1.1 no such user", "MAIL", Outcome.BOUNCE),
    ],
)
def test_classify_exactly(code: int, text: str, stage: str, expected: Outcome) -> None:
    assert classify(code, text, stage) is expected


def test_classify_defaults_to_the_end_of_data() -> None:
    assert classify(550, "mailbox unavailable") is Outcome.FAILED  # at RCPT: a bounce
    assert classify(550, "5.1.1 no such user") is Outcome.BOUNCE  # at MAIL: policy


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4.7.0 Daily sending quota exceeded", True),
        ("5.4.5 Daily user sending quota exceeded", True),
        ("Sending quota exceeded", True),
        ("Message limit per day reached", True),
        ("quota reached for today", True),
        ("5.2.2 mailbox quota exceeded", False),
        ("4.2.2 over quota", False),
        ("", False),
    ],
)
def test_quota_refusals(text: str, expected: bool) -> None:
    assert is_quota_refusal(text) is expected


def test_closing_is_a_retry_unless_the_quota_is_used_up() -> None:
    assert _closing("4.3.2 bye") == SendOutcome(Outcome.RETRY, 421, "4.3.2 bye")
    assert _closing("4.7.0 daily sending quota exceeded") == SendOutcome(
        Outcome.QUOTA, 421, "4.7.0 daily sending quota exceeded"
    )


def test_decode_collapses_whitespace_replaces_bad_bytes_and_caps_at_1000() -> None:
    assert _decode(b"5.1.1  no\r\nsuch \t user\xff") == "5.1.1 no such user\ufffd"
    assert _decode("  already\n text ") == "already text"
    assert _decode("caf\u00e9".encode()) == "caf\u00e9"
    assert _decode(b"x" * 1001) == "x" * 1000
    assert _decode("y" * 1000) == "y" * 1000


def test_refused_carries_its_outcome_and_says_its_text() -> None:
    outcome = SendOutcome(Outcome.POLICY, 554, "5.7.1 no")
    refused = _Refused(outcome)
    assert refused.outcome is outcome
    assert str(refused) == "554 5.7.1 no"


def test_smtp_urls_parse_exactly() -> None:
    assert SMTPTarget.parse("smtp://mail.example.com") == SMTPTarget(
        False, "mail.example.com", 587, None, None
    )
    assert SMTPTarget.parse("smtps://mail.example.com") == SMTPTarget(
        True, "mail.example.com", 465, None, None
    )
    assert SMTPTarget.parse("smtps://u:p@mail.example.com:2465") == SMTPTarget(
        True, "mail.example.com", 2465, "u", "p"
    )
    assert SMTPTarget.parse("smtp://u%20x@mail.example.com:25") == SMTPTarget(
        False, "mail.example.com", 25, "u x", None
    )
    assert SMTPTarget.parse("smtp://:@mail.example.com") == SMTPTarget(
        False, "mail.example.com", 587, "", ""
    )


@pytest.mark.parametrize(
    "url", ["http://mail.example.com", "smtp://", "smtps:///x", "mail.example.com", "SMTPX://h"]
)
def test_other_urls_are_refused_by_name(url: str) -> None:
    with pytest.raises(ValueError) as caught:
        SMTPTarget.parse(url)
    assert str(caught.value) == f"not an smtp:// or smtps:// URL: {url!r}"


def test_a_target_prints_without_its_password() -> None:
    assert str(SMTPTarget.parse("smtp://u:secret@h.example:25")) == "smtp://u@h.example:25"
    assert str(SMTPTarget.parse("smtps://h.example")) == "smtps://h.example:465"
    assert str(SMTPTarget.parse("smtp://:pw@h.example")) == "smtp://h.example:587"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("[::1]", True),
        ("10.0.0.1", False),
        ("mail.example.com", False),
        ("localhost.example", False),
    ],
)
def test_loopback_targets(host: str, loopback: bool) -> None:
    assert SMTPTarget.parse(f"smtp://{host}:25").loopback is loopback


def test_dot_stuffing_exactly() -> None:
    assert _dot_stuff(b"a\r\nb\r\n") == b"a\r\nb\r\n.\r\n"
    assert _dot_stuff(b"a\r\nb") == b"a\r\nb\r\n.\r\n"
    assert _dot_stuff(b".a\r\n.\r\n..b\r\nc.d\r\n") == b"..a\r\n..\r\n...b\r\nc.d\r\n.\r\n"
    assert _dot_stuff(b"a\nb\n") == b"a\r\nb\r\n.\r\n"
    assert _dot_stuff(b"a\rb\r") == b"a\r\nb\r\n.\r\n"
    assert _dot_stuff(b"a\r\nb\nc\rd") == b"a\r\nb\r\nc\r\nd\r\n.\r\n"
    assert _dot_stuff(b"a\n.b") == b"a\r\n..b\r\n.\r\n"
    assert _dot_stuff(b"\n\r") == b"\r\n\r\n.\r\n"
    assert _dot_stuff(b"") == b"\r\n.\r\n"


def test_describe_names_the_error() -> None:
    assert _describe(TimeoutError("x")) == "timed out waiting for the server"
    assert _describe(socket.timeout()) == "timed out waiting for the server"  # noqa: UP041
    assert _describe(ConnectionRefusedError(111, "Connection refused")) == (
        "ConnectionRefusedError: [Errno 111] Connection refused"
    )
    assert _describe(ConnectionResetError()) == "ConnectionResetError"


@pytest.mark.parametrize(
    ("now", "seconds"),
    [
        (datetime(2026, 3, 1, 23, 0, 0, tzinfo=ZoneInfo("UTC")), 3600.0),
        (datetime(2026, 3, 1, 0, 0, 0, tzinfo=ZoneInfo("UTC")), 86400.0),
        (datetime(2026, 3, 1, 12, 30, 15, 500000, tzinfo=ZoneInfo("UTC")), 41384.5),
        (datetime(2026, 3, 1, 23, 59, 30, tzinfo=ZoneInfo("UTC")), 60.0),  # at least a minute
        (datetime(2026, 3, 1, 23, 58, 59, tzinfo=ZoneInfo("UTC")), 61.0),
        (datetime(2026, 12, 31, 22, 0, 0, tzinfo=ZoneInfo("Europe/Paris")), 7200.0),
    ],
)
def test_seconds_to_midnight(now: datetime, seconds: float) -> None:
    assert _seconds_to_midnight(now) == seconds


def test_open_transport_picks_by_the_number_of_urls(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    one = open_transport(make_settings(NEWSLETTER_SMTP_URL="smtp://a.example:25"))
    assert isinstance(one, SMTPPool)
    assert one.name == "smtp://a.example:25"
    assert one.description == "smtp://a.example:25 (4 connections)"
    assert one.concurrency == 4
    two = open_transport(
        make_settings(
            NEWSLETTER_SMTP_URL="smtp://a.example:25, smtps://u:pw@b.example",
            NEWSLETTER_SMTP_CONNECTIONS="3",
        )
    )
    assert isinstance(two, RelayPool)
    assert [r.pool.name for r in two.relays] == ["smtp://a.example:25", "smtps://u@b.example:465"]
    assert two.description == "smtp://a.example:25, then smtps://u@b.example:465 (3 connections)"
    assert two.concurrency == 3
    box = open_transport(make_settings())
    assert isinstance(box, MaildirOutbox)
    assert box.path == tmp_path / "outbox"
    box.close()


def test_a_closed_pool_refuses_to_send(make_settings: Callable[..., Settings]) -> None:
    pool = SMTPPool(make_settings(), "smtp://127.0.0.1:1")
    pool.close()
    with pytest.raises(RuntimeError, match=r"^transport is closed$"):
        pool.send("a@example.com", "b@example.org", b"x")


# --- RelayPool bookkeeping: which outcome sets a relay aside, and for how long ---------


def _relays(make_settings: Callable[..., Settings], **env: str) -> RelayPool:
    return RelayPool(
        make_settings(**env), ("smtp://127.0.0.1:1", "smtp://127.0.0.1:2", "smtp://127.0.0.1:3")
    )


def test_a_new_relay_is_in_service(make_settings: Callable[..., Settings]) -> None:
    pool = _relays(make_settings)
    relay = pool.relays[0]
    assert (relay.down_until, relay.failures, relay.closing_streak, relay.why) == (0.0, 0, 0, "")
    assert isinstance(relay, _Relay)
    assert pool.settings.smtp_connections == 4
    assert pool._candidates() == pool.relays


def _fail(pool: RelayPool, relay: _Relay, outcome: SendOutcome) -> tuple[bool, float, float]:
    before = time.monotonic()
    failing = pool._failing(relay, outcome)
    after = time.monotonic()
    return failing, before, after


@pytest.mark.parametrize(
    ("outcome", "streak"),
    [
        (SendOutcome(Outcome.SENT, 250, "ok"), 0),
        (SendOutcome(Outcome.RETRY, 451, "4.7.1 greylisted"), 0),
        (SendOutcome(Outcome.BOUNCE, 550, "5.1.1 gone"), 0),
        (SendOutcome(Outcome.FAILED, 554, "5.6.0 content"), 0),
        (SendOutcome(Outcome.RETRY, None, "timed out waiting for the server"), 0),
        (SendOutcome(Outcome.RETRY, 421, "4.3.2 bye"), 1),
        (SendOutcome(Outcome.FAILED, 421, "odd"), 0),
    ],
)
def test_ordinary_outcomes_keep_the_relay_in_service(
    make_settings: Callable[..., Settings], outcome: SendOutcome, streak: int
) -> None:
    pool = _relays(make_settings)
    relay = pool.relays[0]
    assert pool._failing(relay, outcome) is False
    assert (relay.down_until, relay.why, relay.closing_streak) == (0.0, "", streak)


@pytest.mark.parametrize(
    "outcome",
    [
        SendOutcome(Outcome.POLICY, 554, "5.7.1 blocked"),
        SendOutcome(Outcome.RETRY, None, "ConnectionRefusedError", relay_fault=True),
        SendOutcome(Outcome.RETRY, 421, "4.3.2 busy", relay_fault=True),
        SendOutcome(Outcome.POLICY, 421, "4.3.2 busy", relay_fault=True),
        SendOutcome(Outcome.FAILED, 554, "odd", relay_fault=True),
    ],
)
def test_failing_outcomes_set_the_relay_aside_for_30_seconds(
    make_settings: Callable[..., Settings], outcome: SendOutcome, caplog: pytest.LogCaptureFixture
) -> None:
    pool = _relays(make_settings)
    relay = pool.relays[0]
    with caplog.at_level(logging.WARNING, logger="newsletter.delivery.transport"):
        failing, before, after = _fail(pool, relay, outcome)
    assert failing is True
    assert before + SET_ASIDE_FIRST <= relay.down_until <= after + SET_ASIDE_FIRST
    assert (relay.failures, relay.closing_streak, relay.why) == (1, 0, outcome.text)
    assert [r.getMessage() for r in caplog.records] == [
        f"relay smtp://127.0.0.1:1 set aside for 30 s: {outcome.text}"
    ]
    assert pool._candidates() == pool.relays[1:]


def test_set_asides_in_a_row_double_up_to_ten_minutes(
    make_settings: Callable[..., Settings],
) -> None:
    pool = _relays(make_settings)
    relay = pool.relays[0]
    pauses = []
    for _ in range(7):
        failing, before, after = _fail(pool, relay, SendOutcome(Outcome.POLICY, 554, "5.7.1 no"))
        assert failing is True
        pause = relay.down_until - before
        assert pause >= relay.down_until - after
        pauses.append(round(pause))
    assert pauses == [30, 60, 120, 240, 480, 600, 600]
    assert SET_ASIDE_MAX == 600.0
    assert relay.failures == 7
    # a failure that is not a set-aside keeps the count; a message sent resets it
    assert pool._failing(relay, SendOutcome(Outcome.RETRY, 451, "later")) is False
    assert relay.failures == 7
    assert pool._failing(relay, SendOutcome(Outcome.SENT, 250, "ok")) is False
    assert relay.failures == 0
    failing, before, after = _fail(pool, relay, SendOutcome(Outcome.POLICY, 554, "5.7.1 no"))
    assert before + 30 <= relay.down_until <= after + 30


def test_three_421s_in_a_row_set_a_relay_aside(make_settings: Callable[..., Settings]) -> None:
    pool = _relays(make_settings)
    relay = pool.relays[0]
    closing = SendOutcome(Outcome.RETRY, 421, "4.3.2 bye")
    assert STREAK_421 == 3
    assert [pool._failing(relay, closing) for _ in range(2)] == [False, False]
    assert relay.closing_streak == 2
    assert pool._failing(relay, SendOutcome(Outcome.RETRY, 451, "later")) is False
    assert relay.closing_streak == 0  # anything else breaks the streak
    assert [pool._failing(relay, closing) for _ in range(3)] == [False, False, True]
    assert (relay.closing_streak, relay.failures, relay.why) == (0, 1, "421 4.3.2 bye")
    # a 421 that is a quota, or one while opening, is not counted in the streak
    other = _relays(make_settings).relays[0]
    quota = SendOutcome(Outcome.QUOTA, 421, "4.7.0 daily sending quota exceeded")
    assert pool._failing(other, SendOutcome(Outcome.RETRY, 421, "x", relay_fault=True)) is True
    assert other.closing_streak == 0
    assert pool._failing(other, quota) is True
    assert other.closing_streak == 0


def test_a_quota_refusal_sets_the_relay_aside_until_local_midnight(
    make_settings: Callable[..., Settings],
) -> None:
    zone = "Pacific/Kiritimati"  # UTC+14: its midnight is far from the machine's
    pool = _relays(make_settings, NEWSLETTER_TIMEZONE=zone)
    relay = pool.relays[1]
    quota = SendOutcome(Outcome.QUOTA, 550, "5.4.5 Daily user sending quota exceeded")
    start = _seconds_to_midnight(datetime.now(ZoneInfo(zone)))
    failing, before, after = _fail(pool, relay, quota)
    end = _seconds_to_midnight(datetime.now(ZoneInfo(zone)))
    assert failing is True
    pause = max(SET_ASIDE_FIRST, end)
    assert before + pause <= relay.down_until <= after + max(SET_ASIDE_FIRST, start)
    assert relay.why == "550 5.4.5 Daily user sending quota exceeded"
    assert pool._candidates() == [pool.relays[0], pool.relays[2]]


def test_when_every_relay_is_aside_the_first_back_is_tried(
    make_settings: Callable[..., Settings],
) -> None:
    pool = _relays(make_settings)
    now = time.monotonic()
    for relay, until in zip(pool.relays, (now + 50, now + 20, now + 40), strict=True):
        relay.down_until = until
    assert pool._candidates() == [pool.relays[1]]
    pool.relays[2].down_until = now - 1
    assert pool._candidates() == [pool.relays[2]]
