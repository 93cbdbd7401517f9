"""Subscriber domain functions on a real, migrated SQLite file (no CLI, no web).

Covers address normalisation (case, IDNA, refusals), name cleaning (header
injection), and the life cycle the web app builds on: request -> confirm ->
unsubscribe/bounce, the "suppression is sticky" rule and how a person who left
comes back, purging expired signups, and erasure.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

from newsletter.context import Context
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Issue,
    IssueKind,
    IssueStatus,
    Subscriber,
    SubscriberStatus,
)
from newsletter.subscribers import store as subs

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


# --- addresses -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("Alice@Example.com", "alice@example.com"),
        ("  bob.smith+news@EXAMPLE.org \n", "bob.smith+news@example.org"),
        ("User@Bücher.Example", "user@xn--bcher-kva.example"),
        ("user@xn--bcher-kva.example", "user@xn--bcher-kva.example"),
        ("ana@ＥＸＡＭＰＬＥ.com", "ana@example.com"),  # full-width letters fold (NFKC)
        ("reader@例え.jp", "reader@xn--r8jz45g.jp"),
    ],
)
def test_normalise_email_one_canonical_ascii_form(raw: str, stored: str) -> None:
    assert subs.normalise_email(raw) == stored


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "no address given"),
        ("   ", "no address given"),
        ("plainaddress", "@-sign"),
        ("foo@", "after the @-sign"),
        ("@example.com", "before the @-sign"),
        ("a..b@example.com", "two periods"),
        ("x@localhost", "period"),
        ("jöhn@example.com", "Internationalized characters before the @-sign"),
        ("Alice <alice@example.com>", "display name"),
        ("alice@example.com\r\nBcc: victim@example.com", ""),
        ("a" * 400 + "@example.com", "longer than 320"),
    ],
)
def test_normalise_email_refuses_with_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(subs.InvalidEmail) as info:
        subs.normalise_email(raw)
    assert reason in info.value.reason
    assert info.value.reason  # never an empty explanation
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Alice Smith", "Alice Smith"),
        ("  Alice \t  Smith  ", "Alice Smith"),
        ("Eve\r\nBcc: victim@example.com", "Eve Bcc: victim@example.com"),
        ("Eve\nX-Injected: 1", "Eve X-Injected: 1"),
        ("nul\x00byte\x1b[31m", "nul byte [31m"),
        ("line\u2028sep\u2029para\x85nel", "line sep para nel"),
        ("evil\u202egnp.exe", "evilgnp.exe"),  # right-to-left override removed
        ("zero\u200bwidth\ufeff", "zerowidth"),
        ("نیما\u200cای", "نیما\u200cای"),  # Persian ZWNJ is part of the name: kept
        ("Jürgen Groß", "Jürgen Groß"),
        ("Cafe\u0301", "Café"),  # NFC
        ("=?utf-8?b?QWRtaW4=?=", "= ?utf-8?b?QWRtaW4= ?="),
        ("", ""),
        (None, ""),
    ],
)
def test_clean_name_strips_what_could_reach_a_header(raw: str | None, clean: str) -> None:
    assert subs.clean_name(raw) == clean


def test_clean_name_caps_length() -> None:
    name = subs.clean_name("x" * 1000)
    assert len(name) == subs.NAME_MAX
    assert not any(ch in subs.clean_name("a\rb\nc\td" * 100) for ch in "\r\n\t")


# --- add ------------------------------------------------------------------------------


def test_add_stores_normalised_and_same_address_in_another_case_is_same_person(
    ctx: Context,
) -> None:
    with ctx.db.write() as session:
        first = subs.add_subscriber(session, "Alice@Example.COM", "Alice")
        assert first.status is SubscriberStatus.PENDING
        assert first.confirmed_at is None
        again = subs.add_subscriber(session, "ALICE@example.com", confirmed=True)
        assert again.id == first.id
    with ctx.db.read() as session:
        rows = session.scalars(select(Subscriber)).all()
        assert [(r.email, r.name, r.status) for r in rows] == [
            ("alice@example.com", "Alice", SubscriberStatus.ACTIVE)
        ]
        assert rows[0].confirmed_at is not None
        assert rows[0].source == "cli"


def test_add_never_downgrades_or_reactivates(ctx: Context) -> None:
    with ctx.db.write() as session:
        active = subs.add_subscriber(session, "a@example.com", confirmed=True)
        assert subs.add_subscriber(session, "a@example.com").status is SubscriberStatus.ACTIVE
        subs.unsubscribe(session, active.id)
        with pytest.raises(subs.Suppressed, match="unsubscribed on"):
            subs.add_subscriber(session, "A@example.com", confirmed=True)
        bounced = subs.add_subscriber(session, "b@example.com", confirmed=True)
        subs.mark_bounced(session, bounced.id)
        with pytest.raises(subs.Suppressed, match="bounced"):
            subs.add_subscriber(session, "b@example.com", confirmed=True)
    with ctx.db.read() as session:
        statuses = dict(session.execute(select(Subscriber.email, Subscriber.status)).all())
    assert statuses == {
        "a@example.com": SubscriberStatus.UNSUBSCRIBED,
        "b@example.com": SubscriberStatus.BOUNCED,
    }


def test_add_cleans_the_name(ctx: Context) -> None:
    with ctx.db.write() as session:
        sub = subs.add_subscriber(session, "n@example.com", "Mallory\r\nBcc: x@example.com")
        assert sub.name == "Mallory Bcc: x@example.com"


# --- the web life cycle -------------------------------------------------------------------


def _get(ctx: Context, sid: int) -> Subscriber:
    """A fresh, detached copy of the row as stored (outlives the read session)."""
    with ctx.db.read() as session:
        sub = session.get(Subscriber, sid)
        assert sub is not None
        session.expunge(sub)
        return sub


def test_request_then_confirm_records_consent(ctx: Context) -> None:
    with ctx.db.write() as session:
        sub = subs.request_subscription(session, "New@Example.com", "New Reader", now=T0)
        assert sub is not None
        sid = sub.id
    row = _get(ctx, sid)
    assert (row.email, row.name, row.status, row.source) == (
        "new@example.com",
        "New Reader",
        SubscriberStatus.PENDING,
        "web",
    )
    assert row.confirm_sent_at == T0
    assert row.consent_at is None

    later = T0 + timedelta(hours=2)
    with ctx.db.write() as session:
        confirmed = subs.confirm(session, sid, "203.0.113.7", now=later)
        assert confirmed is not None and confirmed.status is SubscriberStatus.ACTIVE
    row = _get(ctx, sid)
    assert row.status is SubscriberStatus.ACTIVE
    assert row.confirmed_at == later
    assert row.consent_at == later
    assert row.consent_ip == "203.0.113.7"


def test_confirm_twice_is_harmless_and_keeps_the_first_consent(ctx: Context) -> None:
    with ctx.db.write() as session:
        sub = subs.request_subscription(session, "twice@example.com", now=T0)
        assert sub is not None
        sid = sub.id
        subs.confirm(session, sid, "198.51.100.1", now=T0 + timedelta(minutes=5))
    with ctx.db.write() as session:
        again = subs.confirm(session, sid, "192.0.2.99", now=T0 + timedelta(days=1))
        assert again is not None and again.status is SubscriberStatus.ACTIVE
    row = _get(ctx, sid)
    assert row.consent_ip == "198.51.100.1"
    assert row.consent_at == T0 + timedelta(minutes=5)


def test_confirm_unknown_id_is_none(ctx: Context) -> None:
    with ctx.db.write() as session:
        assert subs.confirm(session, 999, "192.0.2.1") is None
        assert subs.unsubscribe(session, 999) is None
        assert subs.mark_bounced(session, 999) is None


def test_confirm_cleans_the_recorded_ip(ctx: Context) -> None:
    with ctx.db.write() as session:
        sub = subs.request_subscription(session, "ip@example.com")
        assert sub is not None
        subs.confirm(session, sub.id, "2001:db8::1\r\nX: y" + "9" * 100)
        assert sub.consent_ip is not None
        assert "\r" not in sub.consent_ip and "\n" not in sub.consent_ip
        assert len(sub.consent_ip) <= subs.IP_MAX


def test_request_for_active_address_sends_nothing_and_changes_nothing(ctx: Context) -> None:
    with ctx.db.write() as session:
        sub = subs.add_subscriber(session, "here@example.com", "Real Name", confirmed=True)
        sid = sub.id
    with ctx.db.write() as session:
        assert subs.request_subscription(session, "HERE@example.com", "Prankster") is None
    row = _get(ctx, sid)
    assert row.name == "Real Name"
    assert row.status is SubscriberStatus.ACTIVE


def test_request_for_pending_address_resends_and_restarts_expiry(ctx: Context) -> None:
    with ctx.db.write() as session:
        first = subs.request_subscription(session, "p@example.com", "P", now=T0)
        assert first is not None
    with ctx.db.write() as session:
        again = subs.request_subscription(session, "p@example.com", "", now=T0 + timedelta(days=3))
        assert again is not None and again.id == first.id
        assert again.status is SubscriberStatus.PENDING
        assert again.name == "P"  # an empty name does not wipe the stored one
        assert again.confirm_sent_at == T0 + timedelta(days=3)


def test_request_rejects_invalid_address(ctx: Context) -> None:
    with ctx.db.write() as session, pytest.raises(subs.InvalidEmail):
        subs.request_subscription(session, "not-an-address", "X")


def test_unsubscribe_is_idempotent_and_keeps_the_row(ctx: Context) -> None:
    with ctx.db.write() as session:
        sid = subs.add_subscriber(session, "u@example.com", confirmed=True).id
    with ctx.db.write() as session:
        first = subs.unsubscribe(session, sid, now=T0)
        assert first is not None and first.status is SubscriberStatus.UNSUBSCRIBED
    with ctx.db.write() as session:
        second = subs.unsubscribe(session, sid, now=T0 + timedelta(days=1))
        assert second is not None
    row = _get(ctx, sid)
    assert row.status is SubscriberStatus.UNSUBSCRIBED
    assert row.unsubscribed_at == T0  # the first time is the record


def test_old_confirmation_link_does_not_resubscribe_someone_who_left(ctx: Context) -> None:
    with ctx.db.write() as session:
        sub = subs.request_subscription(session, "left@example.com", now=T0)
        assert sub is not None
        sid = sub.id
        subs.confirm(session, sid, "192.0.2.1", now=T0)
        subs.unsubscribe(session, sid, now=T0 + timedelta(days=1))
    with ctx.db.write() as session:  # the old (still unexpired) link is clicked again
        result = subs.confirm(session, sid, "192.0.2.1", now=T0 + timedelta(days=2))
        assert result is not None and result.status is SubscriberStatus.UNSUBSCRIBED
    assert _get(ctx, sid).status is SubscriberStatus.UNSUBSCRIBED


def test_person_who_left_can_come_back_through_a_fresh_request_and_confirm(ctx: Context) -> None:
    with ctx.db.write() as session:
        sid = subs.add_subscriber(session, "back@example.com", confirmed=True).id
        subs.unsubscribe(session, sid, now=T0)
    with ctx.db.write() as session:
        again = subs.request_subscription(
            session, "Back@example.com", "Back", now=T0 + timedelta(1)
        )
        assert again is not None and again.id == sid
        # Still suppressed until they confirm: an unconfirmed request changes nothing.
        assert again.status is SubscriberStatus.UNSUBSCRIBED
    with ctx.db.write() as session:
        assert subs.purge_expired_pending(session, timedelta(days=7), now=T0 + timedelta(30)) == 0
    with ctx.db.write() as session:
        back = subs.confirm(session, sid, "192.0.2.5", now=T0 + timedelta(days=2))
        assert back is not None and back.status is SubscriberStatus.ACTIVE
    row = _get(ctx, sid)
    assert row.status is SubscriberStatus.ACTIVE
    assert row.unsubscribed_at is None
    assert row.consent_ip == "192.0.2.5"
    assert row.consent_at == T0 + timedelta(days=2)


def test_bounced_address_never_comes_back_through_the_form(ctx: Context) -> None:
    with ctx.db.write() as session:
        sid = subs.add_subscriber(session, "bb@example.com", confirmed=True).id
        bounced = subs.mark_bounced(session, sid)
        assert bounced is not None
        assert (bounced.status, bounced.bounce_count) == (SubscriberStatus.BOUNCED, 1)
        subs.mark_bounced(session, sid)
        assert subs.confirm(session, sid, "192.0.2.1") is not None
        assert _status(session, sid) is SubscriberStatus.BOUNCED
        assert subs.request_subscription(session, "bb@example.com") is None  # nothing to send
        subs.confirm(session, sid, "192.0.2.1")
        assert _status(session, sid) is SubscriberStatus.BOUNCED
    assert _get(ctx, sid).bounce_count == 2


def _status(session: object, sid: int) -> SubscriberStatus:
    from sqlalchemy.orm import Session

    assert isinstance(session, Session)
    value = session.scalar(select(Subscriber.status).where(Subscriber.id == sid))
    assert value is not None
    return value


def test_bounce_after_unsubscribe_keeps_unsubscribed_but_counts(ctx: Context) -> None:
    with ctx.db.write() as session:
        sid = subs.add_subscriber(session, "ub@example.com", confirmed=True).id
        subs.unsubscribe(session, sid)
        result = subs.mark_bounced(session, sid)
        assert result is not None
        assert (result.status, result.bounce_count) == (SubscriberStatus.UNSUBSCRIBED, 1)


def test_pending_confirmation_that_bounces_is_suppressed_and_not_purged(ctx: Context) -> None:
    with ctx.db.write() as session:
        sub = subs.request_subscription(session, "typo@example.com", now=T0)
        assert sub is not None
        subs.mark_bounced(session, sub.id)
    with ctx.db.write() as session:
        assert subs.purge_expired_pending(session, timedelta(days=7), now=T0 + timedelta(30)) == 0
        assert subs.find(session, "typo@example.com") is not None


def _issue_with_deliveries(ctx: Context, sid: int, statuses: list[DeliveryStatus]) -> None:
    with ctx.db.write() as session:
        for status in statuses:
            issue = Issue(kind=IssueKind.MANUAL, subject="s", html="h", text="t")
            issue.status = IssueStatus.SENDING
            session.add(issue)
            session.flush()
            session.add(Delivery(issue_id=issue.id, subscriber_id=sid, status=status))


def test_unsubscribe_skips_deliveries_still_queued(ctx: Context) -> None:
    with ctx.db.write() as session:
        sid = subs.add_subscriber(session, "q@example.com", confirmed=True).id
    _issue_with_deliveries(
        ctx, sid, [DeliveryStatus.QUEUED, DeliveryStatus.SENT, DeliveryStatus.SENDING]
    )
    with ctx.db.write() as session:
        subs.unsubscribe(session, sid)
    with ctx.db.read() as session:
        statuses = session.scalars(
            select(Delivery.status).where(Delivery.subscriber_id == sid).order_by(Delivery.issue_id)
        ).all()
    assert statuses == [DeliveryStatus.SKIPPED, DeliveryStatus.SENT, DeliveryStatus.SENDING]


# --- purge ------------------------------------------------------------------------------


def test_purge_expired_pending_only_removes_unanswered_web_signups(ctx: Context) -> None:
    week = timedelta(days=7)
    with ctx.db.write() as session:
        old = subs.request_subscription(session, "old@example.com", now=T0)
        fresh = subs.request_subscription(session, "fresh@example.com", now=T0 + timedelta(6))
        renewed = subs.request_subscription(session, "renewed@example.com", now=T0)
        assert old and fresh and renewed
        subs.request_subscription(session, "renewed@example.com", now=T0 + timedelta(5))
        confirmed = subs.request_subscription(session, "yes@example.com", now=T0)
        assert confirmed is not None
        subs.confirm(session, confirmed.id, "192.0.2.1", now=T0)
        subs.add_subscriber(session, "imported@example.com", now=T0)  # operator's own list
        gone = subs.add_subscriber(session, "gone@example.com", confirmed=True, now=T0)
        subs.unsubscribe(session, gone.id, now=T0)
    with ctx.db.write() as session:
        purged = subs.purge_expired_pending(session, week, now=T0 + timedelta(days=8))
    assert purged == 1
    with ctx.db.read() as session:
        left = set(session.scalars(select(Subscriber.email)))
    assert left == {
        "fresh@example.com",
        "renewed@example.com",
        "yes@example.com",
        "imported@example.com",
        "gone@example.com",
    }
    with ctx.db.write() as session:  # a cutoff datetime works too
        assert subs.purge_expired_pending(session, T0 + timedelta(days=20)) == 2


# --- remove / erase ------------------------------------------------------------------------


def test_remove_unsubscribes_and_keeps_the_row(ctx: Context) -> None:
    with ctx.db.write() as session:
        subs.add_subscriber(session, "r@example.com", confirmed=True)
    with ctx.db.write() as session:
        removal = subs.remove(session, "R@Example.com")
    assert (removal.email, removal.previous, removal.erased) == (
        "r@example.com",
        SubscriberStatus.ACTIVE,
        False,
    )
    with ctx.db.read() as session:
        row = subs.find(session, "r@example.com")
        assert row is not None and row.status is SubscriberStatus.UNSUBSCRIBED
        assert row.unsubscribed_at is not None


def test_erase_removes_the_person_and_their_deliveries(ctx: Context) -> None:
    with ctx.db.write() as session:
        sid = subs.add_subscriber(session, "erase@example.com", "Erase Me", confirmed=True).id
        keep = subs.add_subscriber(session, "keep@example.com", confirmed=True).id
    _issue_with_deliveries(ctx, sid, [DeliveryStatus.SENT, DeliveryStatus.BOUNCED])
    _issue_with_deliveries(ctx, keep, [DeliveryStatus.SENT])
    with ctx.db.write() as session:
        removal = subs.remove(session, "erase@example.com", erase=True)
    assert removal.erased and removal.deliveries_erased == 2
    with ctx.db.read() as session:
        assert session.get(Subscriber, sid) is None
        assert session.scalars(select(Delivery).where(Delivery.subscriber_id == sid)).all() == []
        assert len(session.scalars(select(Delivery)).all()) == 1
        # Nothing else in the database still holds the address or the name.
    from sqlalchemy import inspect, table

    with ctx.db.read() as session:
        names = inspect(session.connection()).get_table_names()
        dump = "\n".join(
            repr(tuple(row))
            for name in names
            for row in session.execute(select(text("*")).select_from(table(name)))
        )
    if ctx.settings.database_url.startswith("sqlite"):  # also the file's bytes, WAL included
        ctx.db.dispose()
        import sqlite3

        with sqlite3.connect(ctx.settings.database_url.removeprefix("sqlite:///")) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            dump += "\n".join(conn.iterdump())
    assert "erase@example.com" not in dump
    assert "Erase Me" not in dump


def test_remove_unknown_or_invalid(ctx: Context) -> None:
    with ctx.db.write() as session:
        with pytest.raises(subs.UnknownSubscriber, match=r"nobody@example\.com"):
            subs.remove(session, "Nobody@example.com")
        with pytest.raises(subs.InvalidEmail):
            subs.remove(session, "nobody@")


def test_list_and_counts(ctx: Context) -> None:
    with ctx.db.write() as session:
        subs.add_subscriber(session, "a1@example.com", confirmed=True)
        subs.add_subscriber(session, "a2@example.com", confirmed=True)
        subs.add_subscriber(session, "p1@example.com")
    with ctx.db.read() as session:
        counts = subs.count_by_status(session)
        active = subs.list_subscribers(session, SubscriberStatus.ACTIVE)
        assert [s.email for s in active] == ["a1@example.com", "a2@example.com"]
        assert len(subs.list_subscribers(session, limit=1)) == 1
    assert counts == {
        SubscriberStatus.PENDING: 1,
        SubscriberStatus.ACTIVE: 2,
        SubscriberStatus.UNSUBSCRIBED: 0,
        SubscriberStatus.BOUNCED: 0,
        SubscriberStatus.COMPLAINED: 0,
    }
