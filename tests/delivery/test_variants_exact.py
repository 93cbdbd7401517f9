"""Readers matched to their issue's renderings (delivery.variants), exact values.

The ``issue_variants`` rows are written as ``mail.variants.record_variants`` leaves
them (one per distinct stored section set, ``story_count`` 0 for a set with nothing
that day); readers' section choices are stored in the same canonical form.
"""

from __future__ import annotations

from _delivery_support import add_subscribers, make_issue
from sqlalchemy import select, update

from newsletter.context import Context
from newsletter.delivery import ledger
from newsletter.delivery.variants import assign_variants, describe_variants, load_variants
from newsletter.models import Delivery, DeliveryStatus, IssueVariant, Subscriber
from newsletter.subscribers.preferences import encode_sections

SPORT = encode_sections(["sport"])
ARTS_SCIENCE = encode_sections(["science", "arts"])
WEATHER = encode_sections(["weather"])
GARDENING = encode_sections(["gardening"])
NOTHING_ARTS = "skipped: nothing in the reader's sections (arts, science) this time"
NOTHING_WEATHER = "skipped: nothing in the reader's sections (weather) this time"


def readers(ctx: Context) -> dict[str, int]:
    """Seven readers: two sport, one arts+science, two weather, one gardening, one all."""
    ids = add_subscribers(ctx, 7)
    chosen = [SPORT, SPORT, ARTS_SCIENCE, WEATHER, WEATHER, None, None]
    names = ["sport1", "sport2", "arts", "weather1", "weather2", "all1", "all2"]
    with ctx.db.write() as session:
        for sid, sections in zip(sorted(ids), chosen, strict=True):
            session.execute(
                update(Subscriber).where(Subscriber.id == sid).values(sections=sections)
            )
    return dict(zip(names, sorted(ids), strict=True))


def add_variant(
    ctx: Context, issue_id: int, number: int, sections: str, story_count: int, tag: str
) -> None:
    with ctx.db.write() as session:
        session.add(
            IssueVariant(
                issue_id=issue_id,
                number=number,
                sections=sections,
                story_count=story_count,
                subject=f"{tag} subject" if story_count else "",
                html=f"<p>{tag}</p>" if story_count else "",
                text=f"{tag} text" if story_count else "",
            )
        )


def rows(ctx: Context, issue_id: int) -> dict[int, tuple[str, int | None, str | None]]:
    """subscriber id -> (status, variant, last_response)."""
    with ctx.db.read() as session:
        found = session.execute(
            select(
                Delivery.subscriber_id,
                Delivery.status,
                Delivery.variant,
                Delivery.last_response,
            ).where(Delivery.issue_id == issue_id)
        ).all()
    return {
        sid: (DeliveryStatus(status).value, variant, last) for sid, status, variant, last in found
    }


def the_issue(ctx: Context) -> tuple[dict[str, int], int, int]:
    """Readers, then issue A (four renderings) and issue B (one), both enqueued."""
    who = readers(ctx)
    other = make_issue(ctx, "Other", enqueue=False)
    add_variant(ctx, other, 1, ARTS_SCIENCE, 4, "other arts")
    with ctx.db.write() as session:
        ledger.enqueue(session, other)
    issue_id = make_issue(ctx, "Main", enqueue=False)
    add_variant(ctx, issue_id, 1, SPORT, 1, "sport")
    add_variant(ctx, issue_id, 2, ARTS_SCIENCE, 0, "arts")
    add_variant(ctx, issue_id, 3, WEATHER, 0, "weather")
    add_variant(ctx, issue_id, 4, GARDENING, 2, "gardening")  # nobody reads it
    with ctx.db.write() as session:
        ledger.enqueue(session, issue_id)
    return who, issue_id, other


def test_enqueue_points_readers_at_their_rendering(ctx: Context) -> None:
    who, issue_id, other = the_issue(ctx)
    assert rows(ctx, issue_id) == {
        who["sport1"]: ("queued", 1, None),
        who["sport2"]: ("queued", 1, None),
        who["arts"]: ("skipped", 2, NOTHING_ARTS),
        who["weather1"]: ("skipped", 3, NOTHING_WEATHER),
        who["weather2"]: ("skipped", 3, NOTHING_WEATHER),
        who["all1"]: ("queued", None, None),
        who["all2"]: ("queued", None, None),
    }
    assert rows(ctx, other) == {  # the other issue's own rendering, untouched by this one
        who["sport1"]: ("queued", None, None),
        who["sport2"]: ("queued", None, None),
        who["arts"]: ("queued", 1, None),
        who["weather1"]: ("queued", None, None),
        who["weather2"]: ("queued", None, None),
        who["all1"]: ("queued", None, None),
        who["all2"]: ("queued", None, None),
    }


def test_assign_variants_returns_how_many_were_skipped(ctx: Context) -> None:
    who = readers(ctx)
    issue_id = make_issue(ctx)  # enqueued before any rendering was recorded
    add_variant(ctx, issue_id, 1, SPORT, 1, "sport")
    add_variant(ctx, issue_id, 2, ARTS_SCIENCE, 0, "arts")
    add_variant(ctx, issue_id, 3, WEATHER, 0, "weather")
    with ctx.db.write() as session:
        assert assign_variants(session, issue_id) == 3
    assert rows(ctx, issue_id)[who["weather2"]] == ("skipped", 3, NOTHING_WEATHER)
    with ctx.db.write() as session:  # only queued rows are assigned: nothing is left
        assert assign_variants(session, issue_id) == 0
    assert rows(ctx, issue_id)[who["arts"]] == ("skipped", 2, NOTHING_ARTS)


def test_assign_variants_leaves_rows_that_are_not_queued(ctx: Context) -> None:
    who = readers(ctx)
    issue_id = make_issue(ctx)
    with ctx.db.write() as session:
        session.execute(
            update(Delivery)
            .where(Delivery.issue_id == issue_id, Delivery.subscriber_id == who["sport1"])
            .values(status=DeliveryStatus.SENT)
        )
    add_variant(ctx, issue_id, 1, SPORT, 3, "sport")
    with ctx.db.write() as session:
        assert assign_variants(session, issue_id) == 0
    got = rows(ctx, issue_id)
    assert got[who["sport1"]] == ("sent", None, None)
    assert got[who["sport2"]] == ("queued", 1, None)


def test_assign_variants_without_renderings_changes_nothing(ctx: Context) -> None:
    who = readers(ctx)
    issue_id = make_issue(ctx)
    with ctx.db.write() as session:
        assert assign_variants(session, issue_id) == 0
    assert set(rows(ctx, issue_id).values()) == {("queued", None, None)}
    assert len(who) == 7


def test_load_variants_gives_renderings_with_stories_and_who_gets_them(ctx: Context) -> None:
    who, issue_id, other = the_issue(ctx)
    with ctx.db.write() as session:  # one is being sent right now, one is done
        session.execute(
            update(Delivery)
            .where(Delivery.issue_id == issue_id, Delivery.subscriber_id == who["sport2"])
            .values(status=DeliveryStatus.SENDING)
        )
    with ctx.db.read() as session:
        variants, assignment = load_variants(session, issue_id)
        assert variants == {
            1: ("sport subject", "<p>sport</p>", "sport text"),
            4: ("gardening subject", "<p>gardening</p>", "gardening text"),
        }
        assert assignment == {who["sport1"]: 1, who["sport2"]: 1}
        assert load_variants(session, other) == (
            {1: ("other arts subject", "<p>other arts</p>", "other arts text")},
            {who["arts"]: 1},
        )
    with ctx.db.write() as session:
        session.execute(
            update(Delivery)
            .where(Delivery.issue_id == issue_id, Delivery.subscriber_id == who["sport1"])
            .values(status=DeliveryStatus.SENT)
        )
    with ctx.db.read() as session:
        assert load_variants(session, issue_id)[1] == {who["sport2"]: 1}


def test_load_variants_with_only_empty_renderings_is_empty(ctx: Context) -> None:
    readers(ctx)
    issue_id = make_issue(ctx, enqueue=False)
    add_variant(ctx, issue_id, 1, WEATHER, 0, "weather")
    with ctx.db.write() as session:
        ledger.enqueue(session, issue_id)
    with ctx.db.read() as session:
        assert load_variants(session, issue_id) == ({}, {})
        assert load_variants(session, issue_id + 100) == ({}, {})


def test_describe_variants_one_line_per_rendering(ctx: Context) -> None:
    _, issue_id, other = the_issue(ctx)
    with ctx.db.write() as session:  # rewritten last: on PostgreSQL it now comes last in a scan
        session.execute(
            update(IssueVariant)
            .where(IssueVariant.issue_id == issue_id, IssueVariant.number == 1)
            .values(subject="sport subject")
        )
    with ctx.db.read() as session:
        assert describe_variants(session, issue_id) == [
            "sport: 1 stories, 2 readers",
            "arts, science: nothing: skipped, 1 readers",
            "weather: nothing: skipped, 2 readers",
            "gardening: 2 stories, 0 readers",
        ]
        assert describe_variants(session, other) == ["arts, science: 4 stories, 1 readers"]
        assert describe_variants(session, other + issue_id) == []


def test_describe_variants_counts_readers_with_thousands(ctx: Context) -> None:
    ids = add_subscribers(ctx, 1200)
    with ctx.db.write() as session:
        session.execute(update(Subscriber).where(Subscriber.id.in_(ids)).values(sections=SPORT))
    issue_id = make_issue(ctx, enqueue=False)
    add_variant(ctx, issue_id, 1, SPORT, 5, "sport")
    with ctx.db.write() as session:
        ledger.enqueue(session, issue_id)
    with ctx.db.read() as session:
        assert describe_variants(session, issue_id) == ["sport: 5 stories, 1,200 readers"]
