"""Feed URLs and polling against a real HTTP server on 127.0.0.1 (conditional GET, 304, errors)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from _stories_support import FeedServer, Served, feed_server
from conftest import FEEDS
from sqlalchemy import func, select

from newsletter.context import Context
from newsletter.models import FeedState, Story
from newsletter.stories.store import import_sources, poll_feed, poll_feed_db


@pytest.fixture
def server() -> Iterator[FeedServer]:
    with feed_server() as running:
        yield running


def stories(ctx: Context) -> int:
    with ctx.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(Story)) or 0)


def state(ctx: Context, url: str) -> FeedState:
    with ctx.db.read() as session:
        row = session.get(FeedState, url)
        assert row is not None
        session.expunge(row)
        return row


def test_poll_uses_etag_and_a_304_imports_nothing(
    shared: Path, ctx: Context, server: FeedServer
) -> None:
    served = server.routes["/bbc.xml"] = Served((FEEDS / "bbc.xml").read_bytes())
    url = server.url("/bbc.xml")
    with ctx.db.write() as session:
        first = poll_feed(session, url, timeout=5, allow_private=True)
    assert first.ok and first.added == 38 and not first.not_modified
    assert stories(ctx) == 38
    with ctx.db.read() as session:
        assert session.scalar(select(func.count()).where(Story.featured.is_(True))) == 38
    saved = state(ctx, url)
    assert saved.etag == '"v1"' and saved.last_modified == served.last_modified
    assert saved.last_status == "200: 38 added, 0 updated, 0 unchanged"
    assert "if-none-match" not in server.requests[0].headers

    with ctx.db.write() as session:
        second = poll_feed(session, url, timeout=5, allow_private=True)
    assert second.ok and second.not_modified
    assert (second.added, second.updated, second.unchanged) == (0, 0, 0)
    assert server.requests[1].headers["if-none-match"] == '"v1"'
    assert server.requests[1].headers["if-modified-since"] == served.last_modified
    assert server.statuses("/bbc.xml") == [200, 304]  # the body was downloaded once
    assert stories(ctx) == 38
    assert state(ctx, url).last_status == "304 not modified"

    # The publisher changes one headline: a new ETag, a full download, one update.
    served.body = served.body.replace(
        b"MOCKS - Royal baby: Duke and Duchess", b"Royal baby: the Duke and Duchess"
    )
    served.etag = '"v2"'
    with ctx.db.write() as session:
        third = poll_feed(session, url, timeout=5, allow_private=True)
    assert (third.added, third.updated, third.unchanged) == (0, 1, 37)
    assert server.statuses("/bbc.xml") == [200, 304, 200]
    assert state(ctx, url).etag == '"v2"'
    assert stories(ctx) == 38


def test_poll_with_last_modified_only(shared: Path, ctx: Context, server: FeedServer) -> None:
    server.routes["/cnn"] = Served((FEEDS / "cnn.xml").read_bytes(), etag=None)
    url = server.url("/cnn")
    first = poll_feed_db(ctx.db, url, feature=False, timeout=5, allow_private=True)
    second = poll_feed_db(ctx.db, url, feature=False, timeout=5, allow_private=True)
    assert first.added == 29 and second.not_modified
    assert "if-none-match" not in server.requests[1].headers
    assert server.requests[1].headers["if-modified-since"] == server.routes["/cnn"].last_modified
    assert server.statuses("/cnn") == [200, 304]
    with ctx.db.read() as session:
        assert session.scalar(select(func.count()).where(Story.featured.is_(True))) == 0
    assert state(ctx, url).etag is None


def test_poll_errors_are_returned_and_recorded(ctx: Context, server: FeedServer) -> None:
    server.routes["/down"] = Served(b"", status=503)
    server.routes["/html"] = Served(b"<html><body>Moved</body></html>", content_type="text/html")
    down = poll_feed_db(ctx.db, server.url("/down"), timeout=5, allow_private=True)
    assert down.error == "HTTP 503 Service Unavailable"
    assert state(ctx, server.url("/down")).last_status == "error: HTTP 503 Service Unavailable"
    html = poll_feed_db(ctx.db, server.url("/html"), timeout=5, allow_private=True)
    assert html.error and "not an RSS or Atom feed" in html.error
    html_state = state(ctx, server.url("/html"))
    assert html_state.etag is None  # validators of an unusable answer are not kept
    assert html_state.last_polled_at is not None
    assert stories(ctx) == 0


def test_import_feed_urls_with_a_failing_and_a_slow_one(
    shared: Path, ctx: Context, server: FeedServer
) -> None:
    server.routes["/guardian"] = Served((FEEDS / "theguardian.xml").read_bytes())
    server.routes["/slow"] = Served((FEEDS / "bbc.xml").read_bytes(), delay=3)
    sources = [server.url("/guardian"), server.url("/missing"), server.url("/slow")]
    with ctx.db.write() as session:
        report = import_sources(session, sources, feature=True, timeout=0.5, allow_private=True)
    guardian, missing, slow = report.results
    assert guardian.ok and guardian.added == 95
    assert missing.error == "HTTP 404 Not Found"
    assert slow.error and "timed out" in slow.error
    assert stories(ctx) == 95
    with ctx.db.read() as session:
        sources_stored = set(session.scalars(select(Story.source)))
    assert sources_stored == {server.url("/guardian")}


@pytest.mark.sqlite_only
def test_fetching_does_not_hold_the_sqlite_write_lock(
    shared: Path, ctx: Context, server: FeedServer
) -> None:
    """A slow feed must not stall a send: the write lock is free while we download."""
    db_file = Path(ctx.settings.database_url.removeprefix("sqlite:///"))
    took_lock: list[bool] = []

    def try_write_lock() -> None:
        other = sqlite3.connect(db_file, timeout=0.2, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            took_lock.append(True)
        except sqlite3.OperationalError:
            took_lock.append(False)
        finally:
            other.close()

    server.routes["/f"] = Served((FEEDS / "huffpost.xml").read_bytes(), on_request=try_write_lock)
    with ctx.db.write() as session:  # the CLI's shape: one write transaction around the import
        report = import_sources(session, [server.url("/f")], timeout=5, allow_private=True)
    assert report.added == 31
    polled = poll_feed_db(ctx.db, server.url("/f"), timeout=5, allow_private=True)
    assert polled.ok and polled.unchanged == 31  # known stories: featuring is the editor's
    assert took_lock == [True, True]
