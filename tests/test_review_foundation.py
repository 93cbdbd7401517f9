"""Defects found in review of the foundation (stories, subscribers, settings, timetable).

Each test failed before its fix.  Real SQLite files, click's runner and a real
HTTP server on 127.0.0.1; no mocks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _stories_support import FeedServer, Served, feed_server
from click.testing import CliRunner
from sqlalchemy import func, select

from newsletter.cli import main
from newsletter.config import ConfigError, load_settings
from newsletter.context import Context
from newsletter.models import FeedState, Story
from newsletter.stories.store import import_sources, poll_feed_db, set_featured


def _rss(*items: tuple[str, str, str]) -> bytes:
    """A small RSS 2.0 feed of (guid, link, title) items."""
    body = "".join(
        f"<item><guid isPermaLink='false'>{guid}</guid><link>{link}</link>"
        f"<title>{title}</title><description>Four words of summary here.</description></item>"
        for guid, link, title in items
    )
    return (
        "<?xml version='1.0' encoding='utf-8'?><rss version='2.0'><channel>"
        f"<title>T</title><link>https://site.example/</link>{body}</channel></rss>"
    ).encode()


def _count(ctx: Context) -> int:
    with ctx.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(Story)) or 0)


@pytest.fixture
def server() -> Iterator[FeedServer]:
    with feed_server() as running:
        yield running


# --------------------------------------------------------------------------- stories


def test_polling_does_not_refeature_a_story_an_editor_unfeatured(
    ctx: Context, server: FeedServer
) -> None:
    served = server.routes["/f.xml"] = Served(
        _rss(("a1", "https://site.example/a", "Story A"), ("b1", "https://site.example/b", "B"))
    )
    url = server.url("/f.xml")
    assert poll_feed_db(ctx.db, url, timeout=5, allow_private=True).added == 2
    with ctx.db.write() as session:
        story_a = session.scalar(select(Story).where(Story.guid == "site.example:a1"))
        assert story_a is not None and story_a.featured
        set_featured(session, [story_a.id], featured=False)
        a_id = story_a.id
    # The publisher edits another item: a full download, and story A is in it again.
    served.body = _rss(
        ("a1", "https://site.example/a", "Story A"), ("b1", "https://site.example/b", "B2")
    )
    served.etag = '"v2"'
    assert poll_feed_db(ctx.db, url, timeout=5, allow_private=True).ok
    with ctx.db.read() as session:
        story = session.get(Story, a_id)
        assert story is not None and not story.featured  # the editor's choice stands


def test_same_story_under_tracking_params_and_host_case_is_one_story(
    ctx: Context, tmp_path: Path
) -> None:
    first = tmp_path / "one.xml"
    first.write_bytes(
        _rss(("g-1", "https://Site.example/news/a?utm_source=rss&utm_medium=feed", "Story A"))
    )
    second = tmp_path / "two.xml"
    second.write_bytes(_rss(("other-9", "https://site.example/news/a", "Story A")))
    with ctx.db.write() as session:
        report = import_sources(session, [str(first), str(second)])
    assert report.ok
    assert (report.added, report.updated) in ((1, 1), (1, 0))
    assert _count(ctx) == 1


def test_markdown_promo_lines_do_not_leak_into_the_summary(ctx: Context, tmp_path: Path) -> None:
    article = tmp_path / "short-story.md"
    article.write_text(
        "# A short story\n\nApril 17, 2023\n\nThe body of the story.\n\n"
        "**Read more exclusive news from Political IQ.**\n\n"
        "*Get the featured stories in your email and don't miss out.*\n\n"
        "## Teaser headline of another story\n",
        encoding="utf-8",
    )
    with ctx.db.write() as session:
        report = import_sources(session, [str(article)], article_base_url="https://s.example")
    assert report.ok
    with ctx.db.read() as session:
        story = session.scalar(select(Story))
        assert story is not None
        assert story.summary == "The body of the story."


def test_overlong_http_validators_are_not_stored(ctx: Context, server: FeedServer) -> None:
    """feed_states.etag is VARCHAR(500): PostgreSQL would refuse a longer one forever."""
    long_etag = '"' + "x" * 600 + '"'
    server.routes["/f.xml"] = Served(
        _rss(("a1", "https://site.example/a", "Story A")), etag=long_etag, last_modified="y" * 150
    )
    url = server.url("/f.xml")
    assert poll_feed_db(ctx.db, url, timeout=5, allow_private=True).added == 1
    with ctx.db.read() as session:
        state = session.get(FeedState, url)
        assert state is not None
        assert state.etag is None and state.last_modified is None


# --------------------------------------------------------------------------- subscribers


def test_csv_unterminated_quote_does_not_silently_swallow_rows(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    csv_file = tmp_path / "list.csv"
    csv_file.write_bytes(b'email,name\na@example.com,"Alice\nb@example.com,Bob\nc@example.com,C\n')
    result = CliRunner().invoke(main, ["subscribers", "import", str(csv_file)])
    assert result.exit_code == 1, result.output
    assert "line 2" in result.stderr
    listed = CliRunner().invoke(main, ["subscribers", "export"])
    assert "Alice b@example.com" not in listed.output


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize("cron", ["0 7 * * 7", "0 7 * * 1-7", "0 7 * * 5-7"])
def test_crontab_sunday_as_7_is_accepted(cron: str) -> None:
    settings = load_settings({"NEWSLETTER_DIGEST_CRON": cron}, dotenv_path=None)
    assert settings.digest_cron == cron


@pytest.mark.parametrize(
    "value", ["a@.com", "a@ex..com", "ü@example.com", "a@-ex.com", "a b@example.com"]
)
def test_unusable_from_address_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^NEWSLETTER_FROM: "):
        load_settings({"NEWSLETTER_FROM": value}, dotenv_path=None)


@pytest.mark.parametrize(
    "value", ["news@localhost", "Desk <desk@news.example.com>", "a@bücher.example"]
)
def test_usable_from_addresses_still_load(value: str) -> None:
    load_settings({"NEWSLETTER_FROM": value}, dotenv_path=None)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("SMTP_URL", "smtp://[::1"),
        ("BASE_URL", "http://host:notaport"),
        ("BASE_URL", "http://[::1"),
        ("FEEDS", "http://feeds.example:99999/x.xml"),
        ("FEED_POLL_MINUTES", "99999999999999"),
        ("MISFIRE_GRACE_SECONDS", "99999999999999999"),
        ("BASE_URL", "https://news.example.com/?ref=mail"),
        ("BASE_URL", "https://news.example.com/#top"),
        ("ARTICLE_BASE_URL", "https://news.example.com/a?x=1"),
        ("DATABASE_URL", "sqlite://"),
        ("DATABASE_URL", "sqlite:///:memory:"),
        ("FEEDS", "https://feeds.example/" + "x" * 2048),
    ],
)
def test_more_bad_values_are_one_line_errors(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^NEWSLETTER_{key}: "):
        load_settings({f"NEWSLETTER_{key}": value}, dotenv_path=None)


def test_feed_url_with_a_non_ascii_path_is_fetched_and_others_still_import(
    ctx: Context, server: FeedServer
) -> None:
    """http.client raised UnicodeEncodeError (a traceback, the other sources lost)."""
    server.routes["/%C3%B1ews.xml"] = Served(_rss(("n1", "https://site.example/n", "Ñews")))
    server.routes["/ok.xml"] = Served(_rss(("o1", "https://site.example/o", "OK")))
    with ctx.db.write() as session:
        report = import_sources(
            session, [server.url("/ñews.xml"), server.url("/ok.xml")], timeout=5, allow_private=True
        )
    assert report.ok, [r.describe() for r in report.results]
    assert report.added == 2


@pytest.mark.parametrize("command", ["feature", "unfeature"])
def test_story_id_out_of_range_is_a_usage_error(cli_env: dict[str, str], command: str) -> None:
    result = CliRunner().invoke(main, ["stories", command, "99999999999999999999"])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output


def test_a_feed_that_drips_its_body_is_cut_off_at_the_timeout() -> None:
    """The socket timeout is per read; a byte every 0.1 s must still end at ``timeout``."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from newsletter.stories.feeds import fetch
    from newsletter.stories.text import SourceError

    body = _rss(("a1", "https://site.example/a", "Story A"))

    class Drip(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                for i in range(0, min(len(body), 60)):
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        started = time.monotonic()
        with pytest.raises(SourceError, match="timed out"):
            fetch(
                f"http://127.0.0.1:{httpd.server_address[1]}/f.xml", timeout=1, allow_private=True
            )
        assert time.monotonic() - started < 3
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_same_story_over_http_and_https_is_one_story(ctx: Context, tmp_path: Path) -> None:
    first = tmp_path / "one.xml"
    first.write_bytes(_rss(("g-1", "http://site.example/news/b", "Story B")))
    second = tmp_path / "two.xml"
    second.write_bytes(_rss(("g-2", "https://site.example/news/b", "Story B")))
    with ctx.db.write() as session:
        report = import_sources(session, [str(first), str(second)])
    assert report.ok and report.added == 1
    assert _count(ctx) == 1


def test_database_from_a_newer_release_is_a_one_line_error(cli_env: dict[str, str]) -> None:
    from _databases import query

    assert CliRunner().invoke(main, ["db", "upgrade"]).exit_code == 0
    url = cli_env["NEWSLETTER_DATABASE_URL"]
    query(url, "UPDATE alembic_version SET version_num = 'f00dfeedbeef'")
    result = CliRunner().invoke(main, ["stories", "list"])
    assert result.exit_code == 2, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    assert "NEWSLETTER_DATABASE_URL" in result.output and "f00dfeedbeef" in result.output


def test_article_date_at_the_edge_of_time_is_not_a_traceback(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    folder = tmp_path / "articles"
    folder.mkdir()
    (folder / "edge.txt").write_text(
        "Edge of time\n\n9999-12-31 23:00\n\nA body.\n", encoding="utf-8"
    )
    (folder / "fine.txt").write_text("Fine\n\nApril 17, 2023\n\nA body.\n", encoding="utf-8")
    env = {"NEWSLETTER_TIMEZONE": "America/New_York"}
    result = CliRunner().invoke(main, ["stories", "import", str(folder)], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "2 added" in result.output


def test_double_escaped_html_and_its_pixel_do_not_reach_the_summary() -> None:
    from newsletter.stories.feeds import parse_feed

    rss = (
        b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
        b"<link>https://s.example/</link><item><title>A</title><link>https://s.example/a</link>"
        b"<description>&amp;lt;p&amp;gt;Real teaser text of the story.&amp;lt;/p&amp;gt;"
        b'&amp;lt;img src="http://feeds.feedburner.com/~r/x/~4/abc" height="1" width="1"/&amp;gt;'
        b"</description></item></channel></rss>"
    )
    assert parse_feed(rss).items[0].summary == "Real teaser text of the story."
    atom = (
        b'<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
        b'<title>t</title><link href="https://s.example/"/><id>x</id>'
        b"<updated>2024-01-01T00:00:00Z</updated><entry><title>B</title>"
        b'<link href="https://s.example/b"/><id>tag:s,2024:b</id>'
        b'<updated>2024-01-01T00:00:00Z</updated><summary type="text">Real teaser text, '
        b'no markup. &lt;img src="http://pixel.example/t.gif" width="1" height="1"/&gt;'
        b"</summary></entry></feed>"
    )
    assert parse_feed(atom).items[0].summary == "Real teaser text, no markup."
