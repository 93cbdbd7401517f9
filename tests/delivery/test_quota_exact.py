"""Exact values of the daily quota (delivery.quota): what counts as today, the
allowance and its reasons, and the remembered relay refusal.

Real databases (the test's own), a named ``now`` instead of the wall clock, and
NEWSLETTER_TIMEZONE=Europe/Paris so local midnight is not UTC midnight.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from _delivery_support import add_subscribers, make_issue
from sqlalchemy import select, update

from newsletter.context import Context
from newsletter.delivery import quota
from newsletter.models import AppState, Delivery, DeliveryStatus

PARIS = {"NEWSLETTER_TIMEZONE": "Europe/Paris"}
NOW = datetime(2026, 3, 10, 21, 30, 17, 250_000, tzinfo=UTC)  # 22:30:17.25 in Paris
MIDNIGHT = datetime(2026, 3, 9, 23, 0, tzinfo=UTC)  # 00:00 in Paris on 10 March
REST = "the rest stay queued until tomorrow (00:00 Europe/Paris)"


@pytest.fixture
def open_ctx(make_settings: Callable[..., Any]) -> Iterator[Callable[..., Context]]:
    opened: list[Context] = []

    def factory(**overrides: str) -> Context:
        c = Context.open(make_settings(**{**PARIS, **overrides}))
        opened.append(c)
        return c

    yield factory
    for c in opened:
        c.close()


def deliveries(ctx: Context, *rows: tuple[DeliveryStatus, datetime | None]) -> None:
    """One issue to len(rows) readers, each delivery set to (status, sent_at)."""
    add_subscribers(ctx, len(rows))
    issue_id = make_issue(ctx)
    with ctx.db.write() as session:
        ids = list(
            session.scalars(
                select(Delivery.subscriber_id)
                .where(Delivery.issue_id == issue_id)
                .order_by(Delivery.subscriber_id)
            )
        )
        for sid, (status, sent_at) in zip(ids, rows, strict=True):
            session.execute(
                update(Delivery)
                .where(Delivery.issue_id == issue_id, Delivery.subscriber_id == sid)
                .values(status=status, sent_at=sent_at)
            )


def test_used_today_counts_from_local_midnight_plus_claims(
    open_ctx: Callable[..., Context],
) -> None:
    ctx = open_ctx()
    deliveries(
        ctx,
        (DeliveryStatus.SENT, MIDNIGHT),  # the first instant of the local day counts
        (DeliveryStatus.SENT, MIDNIGHT - timedelta(seconds=1)),  # yesterday, local time
        (DeliveryStatus.SENT, NOW - timedelta(hours=9)),
        (DeliveryStatus.SENDING, None),  # a claim reserves its share
        (DeliveryStatus.QUEUED, None),
    )
    with ctx.db.read() as session:
        assert quota.used_today(session, ctx.settings, NOW) == 3
        # the next local day: only the claim
        assert quota.used_today(session, ctx.settings, NOW + timedelta(hours=2)) == 1
        assert quota.day_start(ctx.settings, NOW) == MIDNIGHT


def test_used_today_is_zero_with_nothing_sent(open_ctx: Callable[..., Context]) -> None:
    ctx = open_ctx()
    with ctx.db.read() as session:
        assert quota.used_today(session, ctx.settings, NOW) == 0


def test_allowance_is_what_is_left_of_the_limit(open_ctx: Callable[..., Context]) -> None:
    ctx = open_ctx(NEWSLETTER_DAILY_LIMIT="4")
    deliveries(ctx, (DeliveryStatus.SENT, NOW), (DeliveryStatus.SENDING, None))
    with ctx.db.write() as session:
        assert quota.allowance(session, ctx.settings, 5, NOW) == quota.Allowance(2)
        assert quota.allowance(session, ctx.settings, 1, NOW) == quota.Allowance(1)
        # tomorrow only the claim counts
        tomorrow = NOW + timedelta(hours=3)
        assert quota.allowance(session, ctx.settings, 9, tomorrow) == quota.Allowance(3)


def test_allowance_one_left(open_ctx: Callable[..., Context]) -> None:
    ctx = open_ctx(NEWSLETTER_DAILY_LIMIT="3")
    deliveries(ctx, (DeliveryStatus.SENT, NOW), (DeliveryStatus.SENT, NOW))
    with ctx.db.write() as session:
        assert quota.allowance(session, ctx.settings, 5, NOW) == quota.Allowance(1)


def test_allowance_at_the_limit_says_why(open_ctx: Callable[..., Context]) -> None:
    ctx = open_ctx(NEWSLETTER_DAILY_LIMIT="1")
    deliveries(ctx, (DeliveryStatus.SENT, NOW), (DeliveryStatus.SENT, NOW))  # one over
    with ctx.db.write() as session:
        assert quota.allowance(session, ctx.settings, 5, NOW) == quota.Allowance(
            0, f"daily limit of 1 messages reached; {REST}"
        )


def test_allowance_limit_with_thousands(open_ctx: Callable[..., Context]) -> None:
    ctx = open_ctx(NEWSLETTER_DAILY_LIMIT="1000")
    add_subscribers(ctx, 1000)
    issue_id = make_issue(ctx)
    with ctx.db.write() as session:
        session.execute(
            update(Delivery)
            .where(Delivery.issue_id == issue_id)
            .values(status=DeliveryStatus.SENT, sent_at=NOW)
        )
        assert quota.allowance(session, ctx.settings, 1, NOW) == quota.Allowance(
            0, f"daily limit of 1,000 messages reached; {REST}"
        )


def test_allowance_without_a_limit_is_what_was_asked(open_ctx: Callable[..., Context]) -> None:
    ctx = open_ctx()  # NEWSLETTER_DAILY_LIMIT unset: 0, no limit
    deliveries(ctx, (DeliveryStatus.SENT, NOW), (DeliveryStatus.SENDING, None))
    with ctx.db.write() as session:
        assert quota.allowance(session, ctx.settings, 7, NOW) == quota.Allowance(7)


def test_allowance_after_a_relay_refusal_today(open_ctx: Callable[..., Context]) -> None:
    ctx = open_ctx()  # no limit of ours: the relay's own refusal still stops the day
    words = "452 4.5.3 Daily sending quota exceeded"
    with ctx.db.write() as session:
        quota.note_relay_refusal(session, words, NOW - timedelta(hours=1))
        assert quota.allowance(session, ctx.settings, 5, NOW) == quota.Allowance(
            0, f"the relay's daily quota is used up ({words}); {REST}"
        )
        assert quota.allowance(session, ctx.settings, 5, NOW + timedelta(hours=3)) == (
            quota.Allowance(5)
        )


def test_relay_refusal_holds_from_local_midnight_to_the_next(
    open_ctx: Callable[..., Context],
) -> None:
    ctx = open_ctx()
    words = "550 5.7.0 daily quota exceeded for this account"
    with ctx.db.write() as session:
        assert quota.relay_refusal(session, ctx.settings, NOW) is None
        quota.note_relay_refusal(session, words, MIDNIGHT)
        stored = session.get(AppState, quota.RELAY_REFUSAL_KEY)
        assert stored is not None and stored.value == f"2026-03-09T23:00:00+00:00 {words}"
        assert quota.relay_refusal(session, ctx.settings, NOW) == words
        assert quota.relay_refusal(session, ctx.settings, MIDNIGHT) == words
        assert quota.relay_refusal(session, ctx.settings, NOW + timedelta(hours=2)) is None
        quota.note_relay_refusal(session, "421 try tomorrow", NOW)  # a newer one replaces it
        assert quota.relay_refusal(session, ctx.settings, NOW) == "421 try tomorrow"


def test_relay_refusal_before_midnight_is_yesterdays(open_ctx: Callable[..., Context]) -> None:
    ctx = open_ctx()
    with ctx.db.write() as session:
        quota.note_relay_refusal(session, "452 quota", MIDNIGHT - timedelta(microseconds=1))
        assert quota.relay_refusal(session, ctx.settings, NOW) is None


def test_relay_refusal_keeps_500_characters(open_ctx: Callable[..., Context]) -> None:
    ctx = open_ctx()
    words = "452 " + "x" * 700
    with ctx.db.write() as session:
        quota.note_relay_refusal(session, words, NOW)
        assert quota.relay_refusal(session, ctx.settings, NOW) == words[:500]


def test_relay_refusal_unreadable_or_empty_is_none(open_ctx: Callable[..., Context]) -> None:
    ctx = open_ctx()
    with ctx.db.write() as session:
        session.add(AppState(key=quota.RELAY_REFUSAL_KEY, value="yesterday 452 quota"))
        session.flush()
        assert quota.relay_refusal(session, ctx.settings, NOW) is None
        row = session.get(AppState, quota.RELAY_REFUSAL_KEY)
        assert row is not None
        row.value = ""
        session.flush()
        assert quota.relay_refusal(session, ctx.settings, NOW) is None


def test_relay_refusal_other_keys_are_not_read(open_ctx: Callable[..., Context]) -> None:
    ctx = open_ctx()
    with ctx.db.write() as session:
        session.add(AppState(key="secret_key", value=f"{NOW.isoformat()} not a refusal"))
        session.flush()
        assert quota.relay_refusal(session, ctx.settings, NOW) is None


def test_clear_relay_refusal(open_ctx: Callable[..., Context]) -> None:
    ctx = open_ctx()
    with ctx.db.write() as session:
        quota.clear_relay_refusal(session)  # nothing to clear: fine
        quota.note_relay_refusal(session, "452 quota", NOW)
        quota.clear_relay_refusal(session)
        assert session.get(AppState, quota.RELAY_REFUSAL_KEY) is None
        assert quota.relay_refusal(session, ctx.settings, NOW) is None
    with ctx.db.read() as session:
        assert session.get(AppState, quota.RELAY_REFUSAL_KEY) is None
