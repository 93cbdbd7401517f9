"""Readers' choices through the real commands: daily vs weekly, sections, pause.

``newsletter send`` / ``send --weekly`` through click's runner on a real SQLite
file, delivering over SMTP to an aiosmtpd server; the test reads what arrived.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import time_machine
from _digest_support import add_story
from click.testing import CliRunner, Result
from conftest import SMTPServer, start_smtp
from sqlalchemy import select

from newsletter import delivery, mail
from newsletter.cli import main
from newsletter.config import load_settings
from newsletter.context import Context
from newsletter.mail.render import render_issue
from newsletter.mail.variants import record_variants
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Frequency,
    Issue,
    IssueKind,
    IssueStatus,
    IssueVariant,
    Subscriber,
)
from newsletter.subscribers import add_subscriber
from newsletter.subscribers.preferences import Choice, apply_choice, encode_sections

MONDAY = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # ISO week 2026-W10


@pytest.fixture
def smtp() -> Iterator[SMTPServer]:
    server = start_smtp()
    yield server
    server.controller.stop()


@pytest.fixture
def cli(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, smtp: SMTPServer
) -> Callable[..., Result]:
    monkeypatch.setenv("NEWSLETTER_SMTP_URL", smtp.url)

    def invoke(*args: str) -> Result:
        result = CliRunner().invoke(main, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result

    return invoke


@pytest.fixture
def cli_ctx(cli_env: dict[str, str]) -> Iterator[Context]:
    ctx = Context.open(load_settings(dotenv_path=None))
    yield ctx
    ctx.close()


def _readers(ctx: Context, **frequencies: Frequency) -> dict[str, int]:
    ids = {}
    with ctx.db.write() as session:
        for local, frequency in frequencies.items():
            sid = add_subscriber(session, f"{local}@example.com", confirmed=True).id
            apply_choice(session, sid, Choice(frequency, None), [])
            ids[local] = sid
    return ids


def _to(smtp: SMTPServer, local: str) -> list[str]:
    """Subjects of the messages that reached ``local@example.com``, in order."""
    address = f"{local}@example.com"
    return [str(m.message["Subject"]) for m in smtp.messages if address in m.rcpt_tos]


def test_weekly_reader_skips_dailies_and_gets_the_weekly_edition(
    cli: Callable[..., Result], cli_ctx: Context, smtp: SMTPServer
) -> None:
    _readers(cli_ctx, daily=Frequency.DAILY, weekly=Frequency.WEEKLY)
    with time_machine.travel(MONDAY, tick=False):
        with cli_ctx.db.write() as session:
            add_story(session, title="Monday lead", published_at=MONDAY - timedelta(hours=1))
        cli("send", "--yes")
    with time_machine.travel(MONDAY + timedelta(days=1), tick=False):  # another calendar day
        with cli_ctx.db.write() as session:
            add_story(session, title="Tuesday lead", published_at=MONDAY + timedelta(hours=20))
            add_story(session, title="Tuesday older", published_at=MONDAY + timedelta(hours=19))
        cli("send", "--yes")
    assert len(_to(smtp, "daily")) == 2
    assert _to(smtp, "weekly") == []
    with cli_ctx.db.read() as session:
        weekly_id = session.scalar(select(Subscriber.id).where(Subscriber.email.like("weekly@%")))
        assert not session.scalars(
            select(Delivery).where(Delivery.subscriber_id == weekly_id)
        ).all()

    with time_machine.travel(MONDAY + timedelta(days=2), tick=False):
        with cli_ctx.db.write() as session:  # in no daily yet
            add_story(session, title="Wednesday fresh", published_at=MONDAY + timedelta(hours=40))
        dry = cli("send", "--weekly", "--dry-run")
        assert "1 weekly readers" in dry.output and _to(smtp, "weekly") == []
        out = cli("send", "--weekly", "--yes")
        assert "queued for 1 readers" in out.output
        again = cli("send", "--weekly", "--yes")  # same ISO week
        assert "already sent" in again.output
    [subject] = _to(smtp, "weekly")
    assert "the week in 4 stories" in subject
    weekly = next(m for m in smtp.messages if "weekly@example.com" in m.rcpt_tos).message
    body = weekly.get_body(preferencelist=("plain",))
    assert body is not None
    text = str(body.get_content())
    assert "THE WEEK IN 4 STORIES" in text
    # Stories the dailies carried too; the dailies' leads first, then newest first.
    order = ["Tuesday lead", "Monday lead", "Wednesday fresh", "Tuesday older"]
    assert sorted(order, key=text.index) == order
    assert "/preferences/" in text
    assert len(_to(smtp, "daily")) == 2  # the daily reader got no weekly
    with cli_ctx.db.read() as session:
        [edition] = session.scalars(select(Issue).where(Issue.kind == IssueKind.WEEKLY)).all()
        assert edition.edition_week == "2026-W10"


def test_manual_issue_goes_to_every_active_reader_whatever_their_frequency(
    cli: Callable[..., Result], cli_ctx: Context, smtp: SMTPServer
) -> None:
    _readers(cli_ctx, d=Frequency.DAILY, w=Frequency.WEEKLY)
    with cli_ctx.db.write() as session:
        story_id = add_story(session, title="Breaking").id
    cli("send", "--story", str(story_id), "--yes")
    assert len(_to(smtp, "d")) == len(_to(smtp, "w")) == 1


def test_paused_reader_gets_nothing_until_the_pause_ends(
    cli: Callable[..., Result], cli_ctx: Context, smtp: SMTPServer
) -> None:
    ids = _readers(cli_ctx, resting=Frequency.DAILY)
    with time_machine.travel(MONDAY, tick=False):
        with cli_ctx.db.write() as session:
            apply_choice(session, ids["resting"], Choice(Frequency.DAILY, None, pause_weeks=2), [])
            add_story(session, title="While away")
        cli("send", "--yes")
    assert _to(smtp, "resting") == []
    with time_machine.travel(MONDAY + timedelta(weeks=2, days=1), tick=False):
        with cli_ctx.db.write() as session:
            add_story(session, title="Back again")
        cli("send", "--yes")
    assert len(_to(smtp, "resting")) == 1


def test_sections_render_once_per_section_set_and_empty_sets_are_skipped(
    cli: Callable[..., Result], cli_ctx: Context, smtp: SMTPServer
) -> None:
    with cli_ctx.db.write() as session:
        # Yesterday's digest carried a Culture story: a section readers can choose.
        add_story(session, title="Old culture", section="Culture")
        day = mail.local_today(cli_ctx.settings) - timedelta(days=1)
        yesterday = mail.build_issue(session, cli_ctx, today=day)
        assert yesterday is not None
        yesterday.status = IssueStatus.SENT
        add_story(session, title="Sport one", section="Sport")
        add_story(session, title="Sport two", section="Sport")
        add_story(session, title="Tech one", section="Tech")
        choices = {
            "sport1": {"Sport"},
            "sport2": {"Sport"},
            "tech": {"Tech"},
            "culture": {"Culture"},
            "both": {"Sport", "Tech"},  # every story of the day: the whole issue
        }
        for local, sections in {**choices, "all": None}.items():
            sub = add_subscriber(session, f"{local}@example.com", confirmed=True)
            sub.sections = encode_sections(sections) if sections else None
    cli("send", "--yes")

    with cli_ctx.db.read() as session:
        digest = session.scalar(select(Issue).where(Issue.kind == IssueKind.DIGEST, Issue.id > 1))
        assert digest is not None
        variants = session.scalars(
            select(IssueVariant).where(IssueVariant.issue_id == digest.id)
        ).all()
        assert sorted((v.sections, v.story_count) for v in variants) == [
            ('["Culture"]', 0),
            ('["Sport"]', 2),
            ('["Tech"]', 1),
        ]  # "both" and "all" get the whole issue: no rendering of their own
        skipped = session.execute(
            select(Delivery.status, Delivery.last_response)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(Delivery.issue_id == digest.id, Subscriber.email == "culture@example.com")
        ).one()
    assert skipped.status == DeliveryStatus.SKIPPED and "Culture" in skipped.last_response

    def stories_in(local: str) -> set[str]:
        [msg] = [m.message for m in smtp.messages if f"{local}@example.com" in m.rcpt_tos]
        part = msg.get_body(preferencelist=("plain",))
        assert part is not None
        text = str(part.get_content())
        return {t for t in ("Sport one", "Sport two", "Tech one", "Old culture") if t in text}

    assert stories_in("sport1") == stories_in("sport2") == {"Sport one", "Sport two"}
    assert stories_in("tech") == {"Tech one"}
    assert stories_in("both") == stories_in("all") == {"Sport one", "Sport two", "Tech one"}
    assert _to(smtp, "culture") == []
    shown = cli("issues", "show", str(digest.id)).output
    assert "Section renderings (3):" in shown
    assert (
        "Sport: 2 stories, 2 readers" in shown and "Culture: nothing: skipped, 1 readers" in shown
    )


def test_record_variants_renders_once_per_distinct_story_set(cli_ctx: Context) -> None:
    """Five readers, three section sets, two of which pick the same stories: two renders."""
    renders: list[int] = []
    with cli_ctx.db.write() as session:
        stories = [
            add_story(session, title="S", section="Sport"),
            add_story(session, title="T", section="Tech"),
        ]
        add_story(session, title="Unused", section="Weather", featured=True)
        for local, sections in (
            ("a", {"Sport"}),
            ("b", {"Sport"}),
            ("c", {"Sport", "Weather"}),  # same stories as {"Sport"} today
            ("d", {"Tech"}),
            ("e", {"Tech"}),
        ):
            sub = add_subscriber(session, f"{local}@example.com", confirmed=True)
            sub.sections = encode_sections(sections)
        issue = Issue(kind=IssueKind.MANUAL, subject="s", html="h", text="t")
        session.add(issue)
        session.flush()

        def render(subset):  # type: ignore[no-untyped-def]
            renders.append(len(subset))
            return render_issue(cli_ctx, subset, MONDAY.date())

        assert record_variants(session, issue, stories, render) == 2
        rows = session.scalars(select(IssueVariant).where(IssueVariant.issue_id == issue.id)).all()
        assert len(rows) == 3 and sorted(renders) == [1, 1]
        delivery.enqueue(session, issue.id)
        numbers = dict(
            session.execute(
                select(Subscriber.email, Delivery.variant).join(
                    Subscriber, Subscriber.id == Delivery.subscriber_id
                )
            ).all()
        )
    assert numbers["a@example.com"] == numbers["b@example.com"] is not None
    assert numbers["d@example.com"] == numbers["e@example.com"] is not None
    assert len(set(numbers.values())) == 3


def test_preview_weekly_shows_the_edition_and_records_nothing(
    cli: Callable[..., Result], cli_ctx: Context, tmp_path: Path
) -> None:
    with cli_ctx.db.write() as session:
        add_story(session, title="Of this week")
    out = tmp_path / "weekly.html"
    result = cli("preview", "--weekly", "-o", str(out))
    assert "1 stories" in result.output and "the week in 1 story" in result.output
    assert "The week in 1 story" in out.read_text(encoding="utf-8")
    with cli_ctx.db.read() as session:
        assert session.scalars(select(Issue)).all() == []
