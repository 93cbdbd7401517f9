"""Story selection, one digest per local day, manual issues, and ``newsletter preview``."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import time_machine
from _digest_support import add_story, feature_dated, import_fixture_feeds, parse_strict, part_text
from click.testing import CliRunner
from sqlalchemy import func, select

from newsletter.cli import main
from newsletter.config import Settings
from newsletter.context import Context
from newsletter.mail.digest import (
    AlreadySentToday,
    UnknownStories,
    build_issue,
    local_today,
    select_stories,
)
from newsletter.models import Issue, IssueKind, IssueStatus, IssueStory, Story

TODAY = date(2026, 11, 27)


def issue_count(ctx: Context) -> int:
    with ctx.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(Issue)) or 0)


def test_digest_from_fixture_feeds_newest_first(ctx: Context) -> None:
    import_fixture_feeds(ctx)
    featured = feature_dated(ctx, 14)  # newest first by publication time
    with ctx.db.write() as session:
        issue = build_issue(session, ctx, today=TODAY)
        assert issue is not None
        assert issue.kind == IssueKind.DIGEST and issue.digest_date == TODAY
        assert issue.status == IssueStatus.SENDING
        chosen = [link.story_id for link in issue.stories]
        assert chosen == featured[:10]  # at most NEWSLETTER_MAX_STORIES (10), newest first
        assert [link.position for link in issue.stories] == list(range(10))
        published = [link.story.published_at for link in issue.stories]
        assert published == sorted(published, reverse=True)
        assert issue.subject and issue.html and issue.text and issue.preheader
        issue_id = issue.id
    with ctx.db.read() as session:
        stored = session.get(Issue, issue_id)
        assert stored is not None and "__NL_UNSUBSCRIBE_URL__" in stored.html  # frozen


def test_only_featured_and_unsent_are_selected(ctx: Context) -> None:
    with ctx.db.write() as session:
        old = add_story(session, title="Old news")
        add_story(session, title="Not featured", featured=False)
        build_issue(session, ctx, today=TODAY)
        new = add_story(session, title="Fresh news")
        chosen = select_stories(session, ctx.settings)
        assert [s.id for s in chosen] == [new.id]
        assert old.id not in [s.id for s in chosen]


def test_nothing_new_means_no_issue(ctx: Context) -> None:
    with ctx.db.write() as session:
        add_story(session, title="Unfeatured", featured=False)
        assert build_issue(session, ctx, today=TODAY) is None
    assert issue_count(ctx) == 0
    with ctx.db.write() as session:
        add_story(session, title="Featured")
        assert build_issue(session, ctx, today=TODAY) is not None
    with ctx.db.write() as session:  # the next day: everything featured has gone out
        assert build_issue(session, ctx, today=TODAY + timedelta(days=1)) is None
    assert issue_count(ctx) == 1


def test_one_digest_per_local_day(ctx: Context) -> None:
    with ctx.db.write() as session:
        add_story(session, title="First")
        first = build_issue(session, ctx, today=TODAY)
        assert first is not None
        first_id = first.id
    with ctx.db.write() as session:
        add_story(session, title="Second, same day")
        with pytest.raises(AlreadySentToday) as caught:
            build_issue(session, ctx, today=TODAY)
        assert caught.value.issue_id == first_id
        assert "2026-11-27 already exists" in str(caught.value)
    with ctx.db.write() as session:
        nxt = build_issue(session, ctx, today=TODAY + timedelta(days=1))
        assert nxt is not None
        assert [link.story.title for link in nxt.stories] == ["Second, same day"]


def test_unique_digest_date_is_the_guard(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even if the pre-check is raced, the unique column turns the loser into AlreadySentToday."""
    with ctx.db.write() as session:
        story = add_story(session, title="Raced")
        session.add(
            Issue(kind=IssueKind.DIGEST, subject="s", html="h", text="t", digest_date=TODAY)
        )
        session.flush()
        from newsletter.mail import digest as digest_module

        original = digest_module.digest_for
        calls: list[date] = []

        def blind_first_check(s: object, day: date) -> Issue | None:
            calls.append(day)
            return None if len(calls) == 1 else original(s, day)  # type: ignore[arg-type]

        monkeypatch.setattr(digest_module, "digest_for", blind_first_check)
        with pytest.raises(AlreadySentToday):
            build_issue(session, ctx, today=TODAY)
        # The savepoint rolled back only the failed insert; the session is still usable.
        assert session.get(Story, story.id) is not None


def test_cancelled_digest_stories_go_out_again(ctx: Context) -> None:
    with ctx.db.write() as session:
        add_story(session, title="Cancelled once")
        issue = build_issue(session, ctx, today=TODAY)
        assert issue is not None
        issue.status = IssueStatus.CANCELLED
    with ctx.db.write() as session:
        again = build_issue(session, ctx, today=TODAY + timedelta(days=1))
        assert again is not None
        assert [link.story.title for link in again.stories] == ["Cancelled once"]


def test_manual_issue_is_exempt_and_keeps_order(ctx: Context) -> None:
    with ctx.db.write() as session:
        a = add_story(session, title="A", featured=False)
        b = add_story(session, title="B")
        build_issue(session, ctx, today=TODAY)  # today's digest (carries B)
        manual = build_issue(session, ctx, story_ids=[b.id, a.id, b.id], subject="Special")
        assert manual is not None
        assert manual.kind == IssueKind.MANUAL and manual.digest_date is None
        assert [link.story_id for link in manual.stories] == [b.id, a.id]
        assert manual.subject == "Special"
        second = build_issue(session, ctx, story_ids=[a.id])
        assert second is not None and second.id != manual.id
        with pytest.raises(UnknownStories, match="999"):
            build_issue(session, ctx, story_ids=[a.id, 999])
        with pytest.raises(ValueError):
            build_issue(session, ctx, story_ids=[])


@pytest.mark.parametrize(
    "subject", ["Hi\r\nBcc: victim@example.com", "x\ny", "=?utf-8?q?evil?=", "   ", "x" * 251]
)
def test_bad_subject_is_refused(ctx: Context, subject: str) -> None:
    with ctx.db.write() as session:
        story = add_story(session)
        with pytest.raises(ValueError):
            build_issue(session, ctx, story_ids=[story.id], subject=subject)


def test_max_stories_setting(make_settings: Callable[..., Settings]) -> None:
    ctx = Context.open(make_settings(NEWSLETTER_MAX_STORIES="3"))
    try:
        with ctx.db.write() as session:
            for i in range(5):
                add_story(session, title=f"S{i}", published_at=datetime(2026, 1, 1 + i, tzinfo=UTC))
            issue = build_issue(session, ctx, today=TODAY)
            assert issue is not None
            assert [link.story.title for link in issue.stories] == ["S4", "S3", "S2"]
    finally:
        ctx.close()


def test_the_day_is_the_newsroom_day(make_settings: Callable[..., Settings]) -> None:
    ctx = Context.open(make_settings(NEWSLETTER_TIMEZONE="Pacific/Auckland"))
    try:
        # 12:30 UTC on the 27th is already 01:30 on the 28th in Auckland (NZDT, +13).
        with time_machine.travel(datetime(2026, 11, 27, 12, 30, tzinfo=UTC), tick=False):
            assert local_today(ctx.settings) == date(2026, 11, 28)
            with ctx.db.write() as session:
                add_story(session, title="Kia ora")
                issue = build_issue(session, ctx)
                assert issue is not None and issue.digest_date == date(2026, 11, 28)
            with ctx.db.write() as session:
                add_story(session, title="Later that NZ day")
                with pytest.raises(AlreadySentToday):
                    build_issue(session, ctx)
        # 10:00 UTC on the 28th is still the 28th in Auckland (23:00).
        late = time_machine.travel(datetime(2026, 11, 28, 10, 0, tzinfo=UTC), tick=False)
        with late, ctx.db.write() as session, pytest.raises(AlreadySentToday):
            build_issue(session, ctx)
        next_day = time_machine.travel(datetime(2026, 11, 28, 11, 30, tzinfo=UTC), tick=False)
        with next_day, ctx.db.write() as session:
            assert build_issue(session, ctx) is not None  # 00:30 on the 29th
    finally:
        ctx.close()


def test_build_issue_does_not_commit(ctx: Context) -> None:
    session = ctx.db.session()
    try:
        add_story(session, title="Uncommitted")
        assert build_issue(session, ctx, today=TODAY) is not None
        session.rollback()
    finally:
        session.close()
    assert issue_count(ctx) == 0


# --- newsletter preview ----------------------------------------------------------------


def _db_snapshot(ctx: Context) -> tuple[int, int, int]:
    with ctx.db.read() as session:
        return (
            int(session.scalar(select(func.count()).select_from(Issue)) or 0),
            int(session.scalar(select(func.count()).select_from(IssueStory)) or 0),
            int(session.scalar(select(func.count()).select_from(Story)) or 0),
        )


@pytest.fixture
def preview_ctx(cli_env: dict[str, str], settings: Settings) -> Context:
    ctx = Context.open(settings)
    import_fixture_feeds(ctx)
    feature_dated(ctx, 10)
    return ctx


def test_preview_writes_html_and_records_nothing(preview_ctx: Context, tmp_path: Path) -> None:
    before = _db_snapshot(preview_ctx)
    result = CliRunner().invoke(main, ["preview", "--name", "Ana María"])
    assert result.exit_code == 0, result.output
    assert "Wrote preview.html (10 stories" in result.output
    html = (tmp_path / "preview.html").read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert "Hi Ana," in html and "__NL_" not in html
    assert "https://news.example.com/unsubscribe/" in html
    assert "https://news.example.com/archive/1" in html  # the id the real issue will get
    assert _db_snapshot(preview_ctx) == before
    # The preview reader's unsubscribe token unsubscribes nobody (id 0 is never valid).
    token = html.split("https://news.example.com/unsubscribe/")[1].split('"')[0]
    with pytest.raises(ValueError):
        preview_ctx.tokens.read_unsubscribe(token)
    # It is the same digest a real build produces afterwards.
    with preview_ctx.db.write() as session:
        issue = build_issue(session, preview_ctx)
        assert issue is not None and issue.id == 1
        assert issue.subject in result.output


def test_preview_eml_is_the_whole_message(preview_ctx: Context, tmp_path: Path) -> None:
    out = tmp_path / "out" / "digest.eml"
    out.parent.mkdir()
    result = CliRunner().invoke(main, ["preview", "--eml", "-o", str(out)])
    assert result.exit_code == 0, result.output
    msg = parse_strict(out.read_bytes())
    assert msg.get_content_type() == "multipart/alternative"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "1 Fleet Street" in part_text(msg, "plain")
    assert "\nHi " not in part_text(msg, "plain")  # no --name: no greeting
    assert email.message_from_bytes(out.read_bytes(), policy=email.policy.default)["To"]


def test_preview_open_uses_the_browser(
    preview_ctx: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url, *a, **k: opened.append(url) or True)
    result = CliRunner().invoke(main, ["preview", "-o", "p.html", "--open"])
    assert result.exit_code == 0, result.output
    assert opened == [(tmp_path / "p.html").resolve().as_uri()]


def test_preview_nothing_new(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["preview"])
    assert result.exit_code == 0
    assert "nothing new to send" in result.output
    assert not (tmp_path / "preview.html").exists()


def test_preview_after_todays_digest_shows_the_next_one(
    preview_ctx: Context, tmp_path: Path
) -> None:
    with time_machine.travel(datetime(2026, 11, 27, 9, 0, tzinfo=UTC), tick=False):
        with preview_ctx.db.write() as session:
            assert build_issue(session, preview_ctx) is not None
            add_story(session, title="Tomorrow morning story")
        result = CliRunner().invoke(main, ["preview"])
    assert result.exit_code == 0, result.output
    assert "2026-11-27 already exists" in result.output and "next digest" in result.output
    html = (tmp_path / "preview.html").read_text()
    assert "Tomorrow morning story" in html
    assert "Saturday 28 November 2026" in html


def test_preview_unwritable_output_is_a_clear_error(preview_ctx: Context, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["preview", "-o", str(tmp_path / "missing" / "p.html")])
    assert result.exit_code != 0
    assert "cannot write" in result.output


def test_preview_without_a_configured_secret_key(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The generated key is stored first, in its own transaction (no lock on ourselves)."""
    monkeypatch.delenv("NEWSLETTER_SECRET_KEY")
    result = CliRunner().invoke(
        main, ["stories", "add", "--title", "T", "--url", "https://e.com/t", "--feature"]
    )
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["preview"])
    assert result.exit_code == 0, result.output
    assert "/unsubscribe/" in (tmp_path / "preview.html").read_text()
