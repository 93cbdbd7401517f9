"""The ledger's statements, row by row: exact statuses, claims, attempts and counts.

Issue 16 (mutation kill rate): every statement of ``delivery.ledger`` is checked
against rows it must touch and rows it must leave alone (another issue, another
sender, another status).  Real databases from the ``ctx`` fixture, no mocks.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from _delivery_support import add_subscribers, make_issue
from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql

from newsletter.context import Context
from newsletter.delivery import ledger, quota
from newsletter.delivery.ledger import Claimant, Job, Result
from newsletter.delivery.outcome import Outcome, SendOutcome
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Frequency,
    Issue,
    IssueKind,
    IssueStatus,
    Subscriber,
    SubscriberStatus,
    utcnow,
)

ME = "host-a:101:aaaaaaaaaaaa"
OTHER = "host-b:202:bbbbbbbbbbbb"


def rows(ctx: Context, issue_id: int) -> dict[int, dict[str, Any]]:
    """subscriber id -> the delivery row's ledger fields."""
    with ctx.db.read() as session:
        found = session.execute(
            select(
                Delivery.subscriber_id,
                Delivery.status,
                Delivery.attempts,
                Delivery.claimed_by,
                Delivery.claim_expires_at,
                Delivery.next_attempt_at,
                Delivery.last_code,
                Delivery.last_response,
                Delivery.message_id,
                Delivery.sent_at,
            ).where(Delivery.issue_id == issue_id)
        ).all()
    return {
        r.subscriber_id: {
            "status": DeliveryStatus(r.status).value,
            "attempts": r.attempts,
            "claimed_by": r.claimed_by,
            "expires": r.claim_expires_at,
            "next": r.next_attempt_at,
            "code": r.last_code,
            "response": r.last_response,
            "mid": r.message_id,
            "sent_at": r.sent_at,
        }
        for r in found
    }


def status_of(ctx: Context, issue_id: int) -> dict[int, str]:
    return {sid: row["status"] for sid, row in rows(ctx, issue_id).items()}


def set_rows(ctx: Context, issue_id: int, ids: list[int], **values: Any) -> None:
    """Put rows in a given state (what an earlier run or an older version left)."""
    with ctx.db.write() as session:
        session.execute(
            update(Delivery)
            .where(Delivery.issue_id == issue_id, Delivery.subscriber_id.in_(ids))
            .values(**values)
        )


def set_subscribers(ctx: Context, ids: list[int], **values: Any) -> None:
    with ctx.db.write() as session:
        session.execute(update(Subscriber).where(Subscriber.id.in_(ids)).values(**values))


def claim(ctx: Context, issue_id: int, after: int, limit: int, who: Claimant) -> ledger.Claim:
    with ctx.db.write() as session:
        return ledger.claim_next(session, issue_id, after, limit, who)


def write_results(
    ctx: Context, issue_id: int, results: list[Result], give_up_after: int | None = None
) -> list[int]:
    with ctx.db.write() as session:
        return ledger.record(session, issue_id, results, give_up_after, sender=ME)


# -- enqueue ------------------------------------------------------------------------


def test_enqueue_counts_only_this_issues_rows_and_refuses_a_second_time(ctx: Context) -> None:
    first = add_subscribers(ctx, 3)
    a = make_issue(ctx, "A")  # 3 rows
    add_subscribers(ctx, 2, start=3)
    gone = add_subscribers(ctx, 1, SubscriberStatus.UNSUBSCRIBED, start=5)
    b = make_issue(ctx, "B", enqueue=False)
    with ctx.db.write() as session:
        assert ledger.enqueue(session, b) == 5
    assert set(status_of(ctx, a)) == set(first)
    assert gone[0] not in status_of(ctx, b)
    assert {(r["status"], r["attempts"]) for r in rows(ctx, b).values()} == {("queued", 0)}
    with ctx.db.write() as session, pytest.raises(ValueError) as raised:
        ledger.enqueue(session, b)
    assert str(raised.value) == f"issue {b} is already enqueued (5 deliveries)"


def test_enqueue_with_nobody_to_mail_queues_nothing(ctx: Context) -> None:
    add_subscribers(ctx, 2, SubscriberStatus.UNSUBSCRIBED)
    issue = make_issue(ctx, enqueue=False)
    with ctx.db.write() as session:
        assert ledger.enqueue(session, issue) == 0
    assert rows(ctx, issue) == {}


def test_enqueue_follows_the_issue_kinds_audience(ctx: Context) -> None:
    daily = add_subscribers(ctx, 2)
    weekly = add_subscribers(ctx, 1, start=2)
    paused = add_subscribers(ctx, 1, start=3)
    set_subscribers(ctx, weekly, frequency=Frequency.WEEKLY)
    set_subscribers(ctx, paused, paused_until=utcnow() + timedelta(days=7))
    issue = make_issue(ctx, enqueue=False)
    with ctx.db.write() as session:
        session.execute(update(Issue).where(Issue.id == issue).values(kind=IssueKind.DIGEST))
        assert ledger.enqueue(session, issue) == 2
    assert sorted(status_of(ctx, issue)) == sorted(daily)


# -- claims -------------------------------------------------------------------------


def test_claim_next_takes_the_keyset_batch_after_the_cursor(ctx: Context) -> None:
    ids = add_subscribers(ctx, 5)
    a = make_issue(ctx, "A")
    b = make_issue(ctx, "B")
    set_subscribers(ctx, [ids[2]], name="")
    expires = utcnow() + timedelta(seconds=30)
    got = claim(ctx, a, ids[0], 2, Claimant(ME, expires))
    assert got.jobs == [
        Job(ids[1], "reader000001@example.org", "Reader 1"),
        Job(ids[2], "reader000002@example.org", ""),
    ]
    assert (got.skipped, got.issue_status, got.last_id) == (0, IssueStatus.SENDING, ids[2])
    after = rows(ctx, a)
    for sid in ids[1:3]:
        assert (after[sid]["status"], after[sid]["claimed_by"]) == ("sending", ME)
        assert after[sid]["expires"] == expires
    assert {after[sid]["status"] for sid in (ids[0], ids[3], ids[4])} == {"queued"}
    assert set(status_of(ctx, b).values()) == {"queued"}  # same readers, other issue
    rest = claim(ctx, a, ids[2], 10, Claimant(ME, expires))
    assert [j.subscriber_id for j in rest.jobs] == [ids[3], ids[4]]
    assert rest.last_id == ids[4]
    assert claim(ctx, a, ids[4], 10, Claimant(ME, expires)) == ledger.Claim(
        [], 0, IssueStatus.SENDING, None
    )


def test_claim_skips_readers_who_left_and_records_them(ctx: Context) -> None:
    ids = add_subscribers(ctx, 3)
    issue = make_issue(ctx)
    other = make_issue(ctx, "Other")
    set_rows(ctx, issue, [ids[2]], next_attempt_at=utcnow() + timedelta(hours=1))
    set_subscribers(ctx, [ids[1]], status=SubscriberStatus.UNSUBSCRIBED)
    set_subscribers(ctx, [ids[2]], status=SubscriberStatus.BOUNCED)
    got = claim(ctx, issue, 0, 10, Claimant(OTHER, utcnow() + timedelta(seconds=30)))
    assert [j.subscriber_id for j in got.jobs] == [ids[0]]
    assert (got.skipped, got.last_id) == (2, ids[2])  # the cursor passes the skipped rows
    after = rows(ctx, issue)
    assert [after[s]["status"] for s in ids] == ["sending", "skipped", "skipped"]
    assert after[ids[2]]["next"] is None
    assert after[ids[1]]["claimed_by"] is None
    assert set(status_of(ctx, other).values()) == {"queued"}  # skipped in this issue only


def test_claim_of_an_issue_no_longer_sending_claims_nothing(ctx: Context) -> None:
    add_subscribers(ctx, 2)
    issue = make_issue(ctx)
    with ctx.db.write() as session:
        session.execute(update(Issue).where(Issue.id == issue).values(status=IssueStatus.PAUSED))
    got = claim(ctx, issue, 0, 10, Claimant(ME, utcnow() + timedelta(seconds=30)))
    assert got == ledger.Claim([], 0, IssueStatus.PAUSED, None)
    assert set(status_of(ctx, issue).values()) == {"queued"}


def test_claim_next_leaves_this_senders_retries_until_due(ctx: Context) -> None:
    ids = add_subscribers(ctx, 5)
    issue = make_issue(ctx)
    later = utcnow() + timedelta(hours=1)
    set_rows(ctx, issue, [ids[0]], next_attempt_at=later, claimed_by=ME)  # mine, not due
    set_rows(ctx, issue, [ids[1]], next_attempt_at=later, claimed_by=OTHER)  # another's
    set_rows(ctx, issue, [ids[2]], next_attempt_at=later, claimed_by=None)  # nobody's
    set_rows(ctx, issue, [ids[3]], next_attempt_at=utcnow() - timedelta(seconds=5), claimed_by=ME)
    got = claim(ctx, issue, 0, 10, Claimant(ME, utcnow() + timedelta(seconds=30)))
    assert [j.subscriber_id for j in got.jobs] == ids[1:]
    assert status_of(ctx, issue)[ids[0]] == "queued"


def test_claim_ids_takes_only_the_named_rows_still_queued(ctx: Context) -> None:
    ids = add_subscribers(ctx, 4)
    a = make_issue(ctx, "A")
    b = make_issue(ctx, "B")
    expires = utcnow() + timedelta(seconds=30)
    claim(ctx, a, ids[2], 1, Claimant(OTHER, expires))  # ids[3] is someone else's now
    with ctx.db.write() as session:
        got = ledger.claim_ids(session, a, [ids[3], ids[1], ids[0]], Claimant(ME, expires))
    assert [j.subscriber_id for j in got.jobs] == [ids[0], ids[1]]
    assert got.last_id == ids[1]
    assert [status_of(ctx, a)[s] for s in ids] == ["sending", "sending", "queued", "sending"]
    assert rows(ctx, a)[ids[3]]["claimed_by"] == OTHER
    assert set(status_of(ctx, b).values()) == {"queued"}


def test_candidates_lock_the_rows_and_skip_locked_ones_on_postgresql() -> None:
    sql = str(ledger._candidates(7).compile(dialect=postgresql.dialect()))
    assert sql.endswith("FOR UPDATE OF deliveries SKIP LOCKED")
    assert "JOIN subscribers ON subscribers.id = deliveries.subscriber_id" in sql


# -- renewing and taking back --------------------------------------------------------


def test_renew_claims_moves_only_this_senders_rows_forward(ctx: Context) -> None:
    ids = add_subscribers(ctx, 5)
    a = make_issue(ctx, "A")
    b = make_issue(ctx, "B")
    soon = utcnow() + timedelta(seconds=10)
    claim(ctx, a, 0, 2, Claimant(ME, soon))  # ids 0, 1
    claim(ctx, a, ids[1], 2, Claimant(OTHER, soon))  # ids 2, 3
    claim(ctx, b, 0, 5, Claimant(ME, soon))
    write_results(ctx, a, [Result(ids[1], SendOutcome(Outcome.RETRY, 451, "4.7.1 later"))])
    later = utcnow() + timedelta(seconds=60)
    with ctx.db.write() as session:
        assert ledger.renew_claims(session, a, Claimant(ME, later)) == 1
    after = rows(ctx, a)
    assert [after[s]["expires"] for s in ids] == [later, None, soon, soon, None]
    assert {r["expires"] for r in rows(ctx, b).values()} == {soon}


def test_take_back_expired_returns_exactly_the_dead_rows(ctx: Context) -> None:
    ids = add_subscribers(ctx, 6)
    a = make_issue(ctx, "A")
    b = make_issue(ctx, "B")
    now = utcnow()
    live = now + timedelta(seconds=30)
    claim(ctx, a, 0, 1, Claimant(OTHER, now - timedelta(seconds=1)))  # 0: expired
    claim(ctx, a, ids[0], 1, Claimant(OTHER, now))  # 1: expires right now: still held
    claim(ctx, a, ids[1], 1, Claimant(OTHER, live))  # 2: live
    claim(ctx, a, ids[2], 1, Claimant("dead:1:x", live))  # 3: live, but its sender is dead
    claim(ctx, a, ids[3], 1, Claimant(OTHER, live))
    set_rows(ctx, a, [ids[4]], claimed_by=None, claim_expires_at=None)  # 4: pre-claims row
    set_rows(ctx, a, [ids[5]], claimed_by=OTHER)  # 5: queued, not in flight
    claim(ctx, b, 0, 6, Claimant(OTHER, now - timedelta(seconds=1)))
    with ctx.db.write() as session:
        assert ledger.take_back_expired(session, a, now, ["dead:1:x", "gone:2:y"]) == 3
    after = rows(ctx, a)
    assert [after[s]["status"] for s in ids] == [
        "queued",
        "sending",
        "sending",
        "queued",
        "queued",
        "queued",
    ]
    for sid in (ids[0], ids[3], ids[4]):
        assert (after[sid]["claimed_by"], after[sid]["expires"]) == (None, None)
    assert after[ids[5]]["claimed_by"] == OTHER
    assert set(status_of(ctx, b).values()) == {"sending"}
    with ctx.db.write() as session:
        assert ledger.take_back_expired(session, a, now) == 0


def test_claim_holders_and_expired_claims_count_per_sender(ctx: Context) -> None:
    ids = add_subscribers(ctx, 5)
    issue = make_issue(ctx)
    now = utcnow()
    claim(ctx, issue, 0, 2, Claimant(ME, now + timedelta(seconds=30)))
    claim(ctx, issue, ids[1], 1, Claimant(OTHER, now))
    claim(ctx, issue, ids[2], 1, Claimant(OTHER, now - timedelta(seconds=1)))
    with ctx.db.read() as session:
        assert ledger.claim_holders(session, issue, now) == {ME: 2, OTHER: 1}
        assert ledger.claim_holders(session, issue, now, besides=ME) == {OTHER: 1}
        assert ledger.expired_claims(session, issue, now) == 1


# -- recording outcomes --------------------------------------------------------------


def test_record_writes_each_outcome_exactly(ctx: Context) -> None:
    ids = add_subscribers(ctx, 7)
    issue = make_issue(ctx)
    claim(ctx, issue, 0, 7, Claimant(ME, utcnow() + timedelta(seconds=30)))
    retry_at = utcnow() + timedelta(seconds=120)
    long = "x" * 600
    before = utcnow()
    bounced = write_results(
        ctx,
        issue,
        [
            Result(ids[0], SendOutcome(Outcome.SENT, 250, "2.0.0 Ok"), "<m0@example.com>", None),
            Result(ids[1], SendOutcome(Outcome.RETRY, 451, "4.7.1 later"), "<m1@x>", retry_at),
            Result(ids[2], SendOutcome(Outcome.BOUNCE, 550, "5.1.1 unknown"), "<m2@x>", retry_at),
            Result(ids[3], SendOutcome(Outcome.POLICY, 554, "5.7.1 blocked"), "<m3@x>", retry_at),
            Result(ids[4], SendOutcome(Outcome.FAILED, 554, long), "<m4@x>"),
            Result(ids[5], SendOutcome(Outcome.FAILED, None, ""), "<m5@x>"),
            Result(ids[6], None),
        ],
    )
    after_time = utcnow()
    assert bounced == [ids[2]]
    after = rows(ctx, issue)
    sent = after[ids[0]]
    assert (sent["status"], sent["attempts"], sent["code"], sent["response"], sent["mid"]) == (
        "sent",
        1,
        250,
        "2.0.0 Ok",
        "<m0@example.com>",
    )
    assert before <= sent["sent_at"] <= after_time
    assert (sent["next"], sent["expires"]) == (None, None)
    assert [after[s]["status"] for s in ids[1:]] == [
        "queued",
        "bounced",
        "queued",
        "failed",
        "failed",
        "queued",
    ]
    assert [after[s]["attempts"] for s in ids] == [1, 1, 1, 0, 1, 1, 0]
    assert [after[s]["next"] for s in ids] == [None, retry_at, None, None, None, None, None]
    assert [after[s]["mid"] for s in ids] == ["<m0@example.com>"] + [None] * 6
    assert [after[s]["sent_at"] is None for s in ids] == [False] + [True] * 6
    assert after[ids[4]]["response"] == "x" * 500
    assert (after[ids[5]]["response"], after[ids[5]]["code"]) == (None, None)
    assert [after[s]["claimed_by"] for s in ids] == [ME] * 6 + [None]  # the release frees it
    with ctx.db.read() as session:
        states = {i: st for i, st in session.execute(select(Subscriber.id, Subscriber.status))}
    assert SubscriberStatus(states[ids[2]]) is SubscriberStatus.BOUNCED
    assert {SubscriberStatus(states[s]) for s in ids if s != ids[2]} == {SubscriberStatus.ACTIVE}


def test_a_quota_refusal_uses_no_attempt_and_is_remembered(ctx: Context) -> None:
    ids = add_subscribers(ctx, 1)
    issue = make_issue(ctx)
    claim(ctx, issue, 0, 1, Claimant(ME, utcnow() + timedelta(seconds=30)))
    words = "550 5.4.6 daily sending quota exceeded"
    write_results(ctx, issue, [Result(ids[0], SendOutcome(Outcome.QUOTA, 550, words[4:]))])
    after = rows(ctx, issue)[ids[0]]
    assert (after["status"], after["attempts"], after["code"]) == ("queued", 0, 550)
    with ctx.db.read() as session:
        assert quota.relay_refusal(session, ctx.settings) == words


def test_record_writes_only_this_senders_claims_except_a_delivery(ctx: Context) -> None:
    ids = add_subscribers(ctx, 3)
    issue = make_issue(ctx)
    claim(ctx, issue, 0, 3, Claimant(OTHER, utcnow() + timedelta(seconds=30)))  # taken over
    write_results(
        ctx,
        issue,
        [
            Result(ids[0], SendOutcome(Outcome.SENT, 250, "ok"), "<m@x>"),
            Result(ids[1], SendOutcome(Outcome.RETRY, 451, "later")),
            Result(ids[2], None),
        ],
    )
    after = rows(ctx, issue)
    assert [after[s]["status"] for s in ids] == ["sent", "sending", "sending"]
    assert [after[s]["claimed_by"] for s in ids] == [OTHER] * 3


def test_a_row_deferred_give_up_after_times_fails(ctx: Context) -> None:
    ids = add_subscribers(ctx, 5)
    a = make_issue(ctx, "A")
    b = make_issue(ctx, "B")
    set_rows(ctx, a, ids, attempts=1)
    set_rows(ctx, a, [ids[1]], attempts=2)
    set_rows(ctx, a, [ids[3], ids[4]], attempts=5)
    set_rows(ctx, b, ids, attempts=5)
    live = utcnow() + timedelta(seconds=30)
    claim(ctx, a, 0, 3, Claimant(ME, live))  # ids 0-2; ids[3] stays queued, unclaimed
    claim(ctx, a, ids[3], 1, Claimant(OTHER, live))  # ids[4]: another sender's now
    claim(ctx, b, 0, 5, Claimant(ME, live))
    later = utcnow() + timedelta(seconds=60)
    retry = SendOutcome(Outcome.RETRY, 451, "later")
    write_results(ctx, b, [Result(ids[0], retry, None, later)])  # no limit given
    assert rows(ctx, b)[ids[0]]["status"] == "queued"
    write_results(
        ctx,
        a,
        [
            Result(ids[0], retry, None, later),
            Result(ids[1], retry, None, later),
            Result(ids[4], retry, None, later),
        ],
        3,
    )
    write_results(ctx, a, [Result(ids[2], SendOutcome(Outcome.POLICY, 554, "5.7.1"))], 1)
    after = rows(ctx, a)
    assert [(after[s]["status"], after[s]["attempts"]) for s in ids] == [
        ("queued", 2),
        ("failed", 3),
        ("queued", 1),
        ("queued", 5),
        ("sending", 5),
    ]
    assert [after[s]["next"] for s in ids[:2]] == [later, None]
    assert (rows(ctx, b)[ids[0]]["status"], rows(ctx, b)[ids[0]]["attempts"]) == ("queued", 6)


def test_requeue_failed_gives_this_issues_failed_rows_fresh_attempts(ctx: Context) -> None:
    ids = add_subscribers(ctx, 3)
    a = make_issue(ctx, "A")
    b = make_issue(ctx, "B")
    stale = utcnow() + timedelta(hours=2)
    set_rows(ctx, a, ids[:2], status=DeliveryStatus.FAILED, attempts=15, next_attempt_at=stale)
    set_rows(ctx, a, [ids[2]], status=DeliveryStatus.SENT, attempts=1)
    set_rows(ctx, b, ids, status=DeliveryStatus.FAILED, attempts=15)
    with ctx.db.write() as session:
        assert ledger.requeue_failed(session, a) == 2
    after = rows(ctx, a)
    assert [(after[s]["status"], after[s]["attempts"], after[s]["next"]) for s in ids] == [
        ("queued", 0, None),
        ("queued", 0, None),
        ("sent", 1, None),
    ]
    assert set(status_of(ctx, b).values()) == {"failed"}


def test_counts_and_next_retry_of_one_issue(ctx: Context) -> None:
    ids = add_subscribers(ctx, 4)
    a = make_issue(ctx, "A")
    b = make_issue(ctx, "B")
    first = utcnow() + timedelta(minutes=5)
    set_rows(ctx, a, [ids[0]], status=DeliveryStatus.SENT, next_attempt_at=first - timedelta(1))
    set_rows(ctx, a, [ids[1]], next_attempt_at=first + timedelta(minutes=1))
    set_rows(ctx, a, [ids[2]], next_attempt_at=first)
    set_rows(ctx, b, [ids[0]], next_attempt_at=first - timedelta(minutes=1))
    with ctx.db.read() as session:
        got = ledger.counts(session, a)
        assert ledger.next_retry(session, a) == first
    assert got == {s: 0 for s in DeliveryStatus} | {
        DeliveryStatus.QUEUED: 3,
        DeliveryStatus.SENT: 1,
    }


# -- PostgreSQL parameters --------------------------------------------------------------


def test_naive_utc_converts_to_utc_then_drops_the_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")  # so "local time" is not UTC either
    time.tzset()
    try:
        paris = datetime(2026, 3, 1, 10, 30, tzinfo=timezone(timedelta(hours=2)))
        assert ledger._naive_utc(paris) == datetime(2026, 3, 1, 8, 30)
        assert ledger._naive_utc(None) is None
    finally:
        monkeypatch.undo()
        time.tzset()


def test_pg_outcome_arrays_one_array_per_field() -> None:
    at = datetime(2026, 3, 1, 8, 30, tzinfo=UTC)
    plus_one = timezone(timedelta(hours=1))
    updates = [
        {
            "b_issue": 3,
            "b_sid": 4,
            "b_me": ME,
            "b_status": "sent",
            "b_inc": 1,
            "b_next": None,
            "b_code": 250,
            "b_response": "ok",
            "b_mid": "<4@x>",
            "b_sent": at.astimezone(plus_one),
        },
        {
            "b_issue": 3,
            "b_sid": 9,
            "b_me": ME,
            "b_status": "queued",
            "b_inc": 0,
            "b_next": at,
            "b_code": 451,
            "b_response": "later",
            "b_mid": None,
            "b_sent": None,
        },
    ]
    assert ledger._pg_outcome_arrays(updates) == {
        "issue": 3,
        "sids": [4, 9],
        "mes": [ME, ME],
        "statuses": ["sent", "queued"],
        "incs": [1, 0],
        "nexts": [None, datetime(2026, 3, 1, 8, 30)],
        "codes": [250, 451],
        "responses": ["ok", "later"],
        "mids": ["<4@x>", None],
        "sents": [datetime(2026, 3, 1, 8, 30), None],
    }


def test_outcomes_are_one_joined_statement_on_postgresql_only() -> None:
    updates = [
        {"b_issue": 8, "b_sid": 4, "b_me": ME, "b_status": "failed", "b_inc": 1, "b_next": None}
    ]
    updates[0] |= {"b_code": 554, "b_response": "no", "b_mid": None, "b_sent": None}
    statement, params = ledger._outcome_statement("postgresql", updates)
    assert statement is ledger._PG_OUTCOMES
    assert params == ledger._pg_outcome_arrays(updates)
    assert (params["issue"], params["sids"], params["statuses"]) == (8, [4], ["failed"])
    assert ledger._outcome_statement("sqlite", updates) == (ledger._UPDATE, updates)
