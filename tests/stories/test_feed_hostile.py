"""Hostile feed servers (issue 16, findings 1 and 10): a dripping server, SSRF redirects.

Real servers on loopback addresses: ``127.0.0.2`` plays the outside feed host a
test allows (NEWSLETTER_FEEDS_ALLOW_PRIVATE=127.0.0.2), ``127.0.0.1`` the internal
service a feed must never reach.  Assertions are on what the servers saw (how many
header bytes went out before the client hung up, which paths were requested), not
on wall-clock bounds.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from _hostile_support import drip_server, feed, http_server
from _timetable_support import processes, spawn, wait_for
from click.testing import CliRunner
from sqlalchemy import select

from newsletter.cli import main
from newsletter.context import Context
from newsletter.models import Story
from newsletter.stories.feeds import MAX_REDIRECTS, fetch
from newsletter.stories.text import SourceError


def titles(ctx: Context) -> set[str]:
    with ctx.db.read() as session:
        return set(session.scalars(select(Story.title)))


def test_headers_dripped_a_byte_at_a_time_end_at_the_deadline_and_others_import(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 1: the header read had only the per-read socket timeout; it hung for ever."""
    monkeypatch.setenv("NEWSLETTER_FEED_TIMEOUT", "1")
    with drip_server(interval=0.05, head_bytes=200) as drip, http_server() as (base, routes):
        routes.answers["/good.xml"] = (200, {"Content-Type": "application/rss+xml"}, feed("good"))
        result = CliRunner().invoke(
            main, ["stories", "import", drip.url, f"{base}/good.xml"], catch_exceptions=False
        )
        # The client gave up while the head was still dripping (it takes 10 s in full).
        assert len(drip.drips) == 1
        assert not drip.drips[0].finished
        assert drip.drips[0].head_sent < drip.drips[0].head_total
    assert result.exit_code == 1, result.output
    assert f"error: {drip.url}: timed out after 1s" in result.stderr
    assert f"{base}/good.xml: 1 added" in result.stdout
    ctx = Context.open()
    try:
        assert titles(ctx) == {"good"}
    finally:
        ctx.close()


def test_sigterm_stops_schedule_while_a_feed_drips(env: dict[str, str], tmp_path: Path) -> None:
    """Finding 1: SIGTERM waited for the feed job, which waited for the dripping server."""
    with drip_server(interval=0.2, head_bytes=300) as drip, processes() as procs:  # 60 s head
        penv = {
            **env,
            "NEWSLETTER_FEEDS": drip.url,
            "NEWSLETTER_FEED_TIMEOUT": "600",
            "NEWSLETTER_DIGEST_CRON": "0 7 1 1 *",
        }
        proc = spawn(["schedule"], penv, tmp_path)
        procs.append(proc)
        assert drip.connected.wait(60), proc.log  # the feed job is inside the fetch
        wait_for(lambda: drip.drips and drip.drips[0].head_sent > 3, 30, "dripping")
        proc.signal(signal.SIGTERM)
        code = proc.wait(timeout=45)  # a safety net only; the order below is the assertion
        assert code == 0, proc.log
        # It exited while the server was still dripping the head: the fetch was cut off.
        assert not drip.drips[0].finished
        assert drip.drips[0].head_sent < drip.drips[0].head_total
        assert "timetable stopped; lease released" in proc.log


def test_digest_runs_while_the_feed_job_is_stuck_in_a_fetch(
    env: dict[str, str], tmp_path: Path
) -> None:
    """Finding 1: the digest polled the feeds first, under the feed job's lock."""
    from _timetable_support import add_featured, add_readers, issue_count

    from newsletter.config import load_settings

    settings = load_settings(
        {**env, "NEWSLETTER_DIGEST_CRON": "* * * * *", "NEWSLETTER_DIGEST_CRON_SECOND": "*/2"},
        dotenv_path=None,
    )
    ctx = Context.open(settings)
    try:
        add_readers(ctx, 2)
        add_featured(ctx, 1)
    finally:
        ctx.close()
    with drip_server(interval=0.2, head_bytes=400) as drip, processes() as procs:  # 80 s head
        penv = {
            **env,
            "NEWSLETTER_FEEDS": drip.url,
            "NEWSLETTER_FEED_TIMEOUT": "600",
            "NEWSLETTER_DIGEST_CRON": "* * * * *",
            "NEWSLETTER_DIGEST_CRON_SECOND": "*/2",
        }
        proc = spawn(["schedule"], penv, tmp_path)
        procs.append(proc)
        proc.wait_log("digest: sent for", timeout=60)
        assert not drip.drips[0].finished  # the feed was still dripping all along
        proc.signal(signal.SIGTERM)
        assert proc.wait(timeout=45) == 0, proc.log
    ctx = Context.open(settings)
    try:
        assert issue_count(ctx) == 1
    finally:
        ctx.close()


# --------------------------------------------------------------------------- SSRF


def test_a_feed_url_on_loopback_is_refused_by_default() -> None:
    with http_server() as (base, routes):
        routes.answers["/f.xml"] = (200, {}, feed("internal"))
        with pytest.raises(SourceError, match=r"refused: 127\.0\.0\.1 resolves to loopback"):
            fetch(f"{base}/f.xml", timeout=5)
        assert routes.hits == []  # not even connected to


def test_a_redirect_to_an_internal_address_is_refused(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 10: a feed redirecting to http://127.0.0.1/internal was followed and imported."""
    monkeypatch.setenv("NEWSLETTER_FEEDS_ALLOW_PRIVATE", "127.0.0.2")  # the "outside" host only
    with http_server("127.0.0.1") as (inside, internal), http_server("127.0.0.2") as (out, routes):
        internal.answers["/internal"] = (200, {}, feed("internal-secret"))
        routes.answers["/feed.xml"] = (302, {"Location": f"{inside}/internal"}, b"")
        routes.answers["/ok.xml"] = (200, {}, feed("outside"))
        result = CliRunner().invoke(
            main, ["stories", "import", f"{out}/feed.xml", f"{out}/ok.xml"], catch_exceptions=False
        )
        assert internal.hits == []
    assert result.exit_code == 1, result.output
    assert "refused: 127.0.0.1 resolves to loopback address 127.0.0.1" in result.stderr
    assert f"{out}/ok.xml: 1 added" in result.stdout


def test_redirects_are_followed_at_most_five_times_and_only_to_http() -> None:
    with http_server("127.0.0.2") as (base, routes):
        for i in range(MAX_REDIRECTS + 1):
            routes.answers[f"/r{i}"] = (302, {"Location": f"/r{i + 1}"}, b"")
        routes.answers[f"/r{MAX_REDIRECTS}"] = (200, {}, feed("five"))
        fetched = fetch(f"{base}/r0", timeout=10, allow_private=("127.0.0.2",))
        assert fetched.status == 200 and fetched.final_url == f"{base}/r{MAX_REDIRECTS}"
        routes.answers[f"/r{MAX_REDIRECTS}"] = (302, {"Location": "/end"}, b"")
        routes.answers["/end"] = (200, {}, feed("six"))
        with pytest.raises(SourceError, match=f"more than {MAX_REDIRECTS} redirects"):
            fetch(f"{base}/r0", timeout=10, allow_private=True)
        assert "/end" not in routes.hits
        routes.answers["/ftp"] = (301, {"Location": "ftp://127.0.0.2/feed.xml"}, b"")
        with pytest.raises(SourceError, match="non-http"):
            fetch(f"{base}/ftp", timeout=10, allow_private=True)
