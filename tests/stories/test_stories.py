"""Story import, dedupe, articles, folders, bad sources and manual stories on a real SQLite file."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import ARTICLES, FEED_FILES, FEEDS
from sqlalchemy import func, select

from newsletter.context import Context
from newsletter.models import Issue, IssueKind, IssueStatus, IssueStory, Story
from newsletter.stories.store import (
    InvalidStory,
    add_story,
    import_sources,
    list_stories,
    set_featured,
    unsent_clause,
)

ARTICLE = ARTICLES / "putin-meets-chinas-defense-minister.txt"
TOTAL_FEED_STORIES = 38 + 29 + 30 + 81 + 31 + 61 + 95


SPONSORED = {
    "Refinance today and you could save $23,000",
    "Hack your mortgage by refinancing to a 15yr fixed",
    "Refi rates at 3.09% APR (15 yr). Do you qualify?",
}


def count(ctx: Context) -> int:
    with ctx.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(Story)) or 0)


def test_all_seven_feeds_import_then_reimport_without_duplicates(
    shared: Path, ctx: Context
) -> None:
    with ctx.db.write() as session:
        report = import_sources(session, [str(p) for p in FEED_FILES], feature=True)
    assert report.ok
    assert {Path(r.source).name: r.added for r in report.results} == {
        "bbc.xml": 38,
        "cnn.xml": 29,
        "elmundo.xml": 30,
        "elpais.xml": 81,
        "huffpost.xml": 31,
        "nytimes.xml": 61,
        "theguardian.xml": 95,
    }
    elpais = next(r for r in report.results if r.source.endswith("elpais.xml"))
    assert any("malformed feed" in w for w in elpais.warnings)
    assert count(ctx) == TOTAL_FEED_STORIES
    with ctx.db.read() as session:
        # Everything but CNN's three adverts (no date, no summary, a lendingtree.com link).
        assert {s.title for s in session.scalars(select(Story)) if not s.featured} == SPONSORED
        urls = list(session.scalars(select(Story.url)))
        assert all(u.startswith(("http://", "https://")) for u in urls)
        assert not any("rss.cnn.com" in u for u in urls)
        summaries = list(session.scalars(select(Story.summary)))
        assert not any("<img" in s or "feedburner" in s or "<" in s for s in summaries)
        titles = set(session.scalars(select(Story.title)))
        assert (
            "Últimas noticias del coronavirus, en directo | Las bolsas asiáticas se desploman"
            " por el miedo a la epidemia" in titles
        )

    with ctx.db.write() as session:
        again = import_sources(session, [str(FEEDS)])  # same feeds via the folder, no --feature
    assert again.ok and again.added == 0 and again.updated == 0
    assert sum(r.unchanged for r in again.results) == TOTAL_FEED_STORIES
    assert count(ctx) == TOTAL_FEED_STORIES
    with ctx.db.read() as session:  # importing without --feature never un-features
        assert session.scalar(select(func.count()).where(Story.featured.is_(False))) == len(
            SPONSORED
        )


def test_changed_title_is_updated_not_duplicated(
    shared: Path, ctx: Context, tmp_path: Path
) -> None:
    feed = tmp_path / "bbc.xml"
    shutil.copy(FEEDS / "bbc.xml", feed)
    with ctx.db.write() as session:
        first = import_sources(session, [str(feed)])
    assert first.added == 38
    with ctx.db.read() as session:
        story = session.scalars(
            select(Story).where(Story.guid == "https://www.bbc.co.uk/news/uk-48201625")
        ).one()
        original_id, created = story.id, story.updated_at
    data = feed.read_text(encoding="utf-8")
    old = "MOCKS - Royal baby: Duke and Duchess of Sussex share first glimpse of son"
    feed.write_text(data.replace(old, "Royal baby: first pictures of the son"), encoding="utf-8")
    with ctx.db.write() as session:
        second = import_sources(session, [str(feed)])
    assert (second.added, second.updated, second.results[0].unchanged) == (0, 1, 37)
    assert count(ctx) == 38
    with ctx.db.read() as session:
        story = session.get_one(Story, original_id)
        assert story.title == "Royal baby: first pictures of the son"
        assert story.updated_at >= created


def test_article_file_title_date_and_no_promo(shared: Path, ctx: Context) -> None:
    with ctx.db.write() as session:
        report = import_sources(
            session, [str(ARTICLE)], article_base_url="https://site.example.com/", feature=True
        )
    assert report.ok and report.added == 1
    with ctx.db.read() as session:
        story = session.scalars(select(Story)).one()
        assert story.title == "Putin Meets with China’s Defense Minister in Moscow"
        assert story.published_at == datetime(2023, 4, 17, tzinfo=UTC)
        assert story.url == "https://site.example.com/putin-meets-chinas-defense-minister"
        assert story.guid == "article:putin-meets-chinas-defense-minister"
        assert story.summary.startswith(
            "Russian President Vladimir Putin met Sunday with China’s Defense Minister, Gen. Li"
        )
        assert story.summary.endswith("…") and len(story.summary) <= 301
        assert story.featured


def test_article_body_stops_at_the_promo(shared: Path, tmp_path: Path) -> None:
    from newsletter.stories.articles import parse_article

    text = ARTICLE.read_text(encoding="utf-8")
    short = tmp_path / "short-story.txt"
    # Keep the layout but make the body short enough to be summarised whole.
    head, _, tail = text.partition("Russian President")
    promo = tail[tail.index("Read more exclusive news") :]
    short.write_text(head + "A short body.\n\n" + promo, encoding="utf-8")
    parsed = parse_article(short, "https://site.example.com")
    item = parsed.items[0]
    assert item.summary == "A short body."  # no promo, no "AAA predicts ..." teaser
    assert parsed.warnings == []
    assert item.title == "Putin Meets with China’s Defense Minister in Moscow"


def test_markdown_article_with_url_line_and_front_matter(ctx: Context, tmp_path: Path) -> None:
    md = tmp_path / "weekly.md"
    md.write_text(
        '---\ntitle: "Front *matter* title"\nauthor: Jane Doe\n---\n'
        "URL: https://site.example.com/weekly?utm_source=x\n"
        "2024-03-05\n\nThe **first** paragraph with [a link](https://x.example).\n\n"
        "## A _sub_ heading\n\n![photo](https://x.example/p.jpg)More.\n\n"
        "Get the featured stories in your email and don't miss out.\nTeaser headline\n",
        encoding="utf-8",
    )
    plain = tmp_path / "undated.txt"
    plain.write_text("Undated title\nURL: ftp://nope.example/x\n\nBody.\n", encoding="utf-8")
    with ctx.db.write() as session:
        report = import_sources(session, [str(md), str(plain)])
    ok, bad = report.results
    assert ok.ok and ok.added == 1
    assert bad.error == "refused non-http(s) URL 'ftp://nope.example/x'"
    with ctx.db.read() as session:
        story = session.scalars(select(Story)).one()
        assert story.title == "Front *matter* title"
        assert story.url == "https://site.example.com/weekly?utm_source=x"
        assert story.guid == "https://site.example.com/weekly"
        assert story.author == "Jane Doe"
        assert story.summary == "The first paragraph with a link. A sub heading More."
        assert story.published_at == datetime(2024, 3, 5, tzinfo=UTC)


def test_folder_import_is_recursive_by_extension(
    shared: Path, ctx: Context, tmp_path: Path
) -> None:
    root = tmp_path / "inbox"
    (root / "feeds" / "deep").mkdir(parents=True)
    (root / ".hidden").mkdir()
    shutil.copy(FEEDS / "huffpost.xml", root / "feeds" / "deep" / "huffpost.rss")
    shutil.copy(ARTICLE, root / "putin.txt")
    shutil.copy(FEEDS / "bbc.xml", root / ".hidden" / "bbc.xml")
    (root / "notes.json").write_text("{}", encoding="utf-8")
    (root / "feeds" / "readme.pdf").write_bytes(b"%PDF-1.4")
    with ctx.db.write() as session:
        report = import_sources(session, [str(root)], article_base_url="https://s.example")
    assert report.ok
    assert sorted(Path(r.source).name for r in report.results) == ["huffpost.rss", "putin.txt"]
    assert report.added == 31 + 1
    empty = tmp_path / "empty"
    empty.mkdir()
    with ctx.db.write() as session:
        nothing = import_sources(session, [str(empty)])
    assert not nothing.ok and "no feed" in (nothing.results[0].error or "")


def test_bad_sources_are_reported_and_the_good_ones_still_import(
    shared: Path, ctx: Context, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.xml"
    garbage.write_bytes(b"this is not xml at all")
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("Titre\n\nCaf\xe9".encode("latin-1"))
    sources = [
        str(FEEDS / "huffpost.xml"),
        str(tmp_path / "missing.xml"),
        str(garbage),
        "ftp://example.com/feed.xml",
        str(binary),
        "http://127.0.0.1:9/feed.xml",  # discard port: connection refused
        str(FEEDS / "bbc.xml"),
    ]
    with ctx.db.write() as session:
        report = import_sources(session, sources, timeout=2, allow_private=True)
    errors = {Path(r.source).name: r.error for r in report.failed}
    assert errors == {
        "missing.xml": "no such file or folder",
        "garbage.xml": errors["garbage.xml"],
        "feed.xml": errors["feed.xml"],
        "latin1.txt": "not UTF-8 text (invalid byte at offset 10)",
    }
    assert "not an RSS or Atom feed" in (errors["garbage.xml"] or "")
    assert [r.error for r in report.results if r.source.startswith("ftp:")] == [
        "only http(s) URLs can be fetched"
    ]
    assert next(r.error for r in report.results if "127.0.0.1:9" in r.source).startswith(
        "cannot connect"
    )
    assert report.added == 31 + 38
    assert count(ctx) == 31 + 38


def test_add_story_validates_and_dedupes(ctx: Context) -> None:
    with ctx.db.write() as session:
        story, created = add_story(
            session, " Hello\r\nworld ", "https://example.com/a?utm_medium=email", "Sum", True
        )
        first_id = story.id
    assert created
    for bad in ("javascript:alert(1)", "example.com/a", "ftp://example.com/a", "", "http://"):
        with ctx.db.write() as session, pytest.raises(InvalidStory):
            add_story(session, "Title", bad)
    with ctx.db.write() as session, pytest.raises(InvalidStory, match="title"):
        add_story(session, " \x00 ", "https://example.com/b")
    with ctx.db.write() as session:
        again, created = add_story(session, "Hello again", "https://example.com/a")
    assert not created and again.id == first_id
    with ctx.db.read() as session:
        (only,) = session.scalars(select(Story)).all()
        assert only.title == "Hello again" and only.featured and only.source == "manual"


def test_set_featured_reports_unknown_ids(ctx: Context) -> None:
    with ctx.db.write() as session:
        a, _ = add_story(session, "A", "https://example.com/a")
        b, _ = add_story(session, "B", "https://example.com/b")
        ids = (a.id, b.id)
    with ctx.db.write() as session:
        assert set_featured(session, [ids[0], 999, ids[1], ids[0]]) == [999]
    with ctx.db.read() as session:
        assert [s.id for s in list_stories(session, featured=True)] == sorted(ids, reverse=True)
    with ctx.db.write() as session:
        assert set_featured(session, [ids[0]], featured=False) == []
    with ctx.db.read() as session:
        assert [s.id for s in list_stories(session, featured=False)] == [ids[0]]


def test_unsent_clause_ignores_cancelled_and_manual_issues(ctx: Context) -> None:
    with ctx.db.write() as session:
        stories = [add_story(session, f"S{i}", f"https://example.com/{i}")[0] for i in range(4)]
        ids = [s.id for s in stories]

        def issue(kind: IssueKind, status: IssueStatus, story_id: int, day: int | None) -> None:
            row = Issue(
                kind=kind,
                subject="s",
                status=status,
                html="",
                text="",
                digest_date=datetime(2024, 1, day).date() if day else None,
            )
            row.stories.append(IssueStory(story_id=story_id, position=0))
            session.add(row)

        issue(IssueKind.DIGEST, IssueStatus.SENT, ids[0], 1)
        issue(IssueKind.DIGEST, IssueStatus.SENDING, ids[1], 2)
        issue(IssueKind.DIGEST, IssueStatus.CANCELLED, ids[2], 3)
        issue(IssueKind.MANUAL, IssueStatus.SENT, ids[3], None)
    with ctx.db.read() as session:
        unsent = set(session.scalars(select(Story.id).where(unsent_clause())))
        assert unsent == {ids[2], ids[3]}
        assert {s.id for s in list_stories(session, unsent=True)} == {ids[2], ids[3]}
