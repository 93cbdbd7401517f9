"""NUL bytes in imported text are dropped, on every backend (PostgreSQL refuses them).

Real files through the real importers: an article file and a subscriber CSV with
NUL bytes in them, and the ORM guard for text that reaches a story or subscriber
some other way.  Runs on SQLite and, with NEWSLETTER_TEST_DATABASE_URL, PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from newsletter import subscribers as subs
from newsletter.context import Context
from newsletter.models import Story, Subscriber
from newsletter.stories import import_sources
from newsletter.subscribers.csvio import apply_import, parse_csv


def test_an_article_with_nul_bytes_imports_without_them(ctx: Context, tmp_path: Path) -> None:
    article = tmp_path / "nul-story.txt"
    article.write_bytes(
        b"Budget\x00 passes in the night\n\nApril 17, 2023\n\n"
        b"The council\x00 voted at 2 a.m. after a long debate about the road.\n"
    )
    with ctx.db.write() as session:
        report = import_sources(
            session, [str(article)], article_base_url="https://site.example/news"
        )
    assert report.ok and report.added == 1, report
    with ctx.db.read() as session:
        story = session.scalars(select(Story)).one()
    assert story.title == "Budget passes in the night"
    assert "\x00" not in story.summary and story.summary.startswith("The council voted")
    assert "\x00" not in story.guid + story.url


def test_a_csv_with_nul_bytes_imports_without_them(ctx: Context) -> None:
    data = b"email,name\nnul@example.com,Ann\x00e Smith\nplain@example.com,Bob\n"
    with ctx.db.write() as session:
        report = apply_import(session, parse_csv(data), confirmed=True)
    assert report.ok and report.added == 2, report
    with ctx.db.read() as session:
        names = {e: n for e, n in session.execute(select(Subscriber.email, Subscriber.name))}
    assert names == {"nul@example.com": "Anne Smith", "plain@example.com": "Bob"}


def test_text_reaching_the_models_another_way_loses_its_nul_bytes(ctx: Context) -> None:
    with ctx.db.write() as session:
        session.add(Story(guid="g\x001", title="Ti\x00tle", url="https://e.example/1", source=""))
        subs.add_subscriber(session, "n@example.com", "Na\x00me", confirmed=True)
    with ctx.db.read() as session:
        assert session.scalars(select(Story.title)).one() == "Title"
        name = session.scalars(select(Subscriber.name)).one()
    assert "\x00" not in name and name.replace(" ", "") == "Name"
