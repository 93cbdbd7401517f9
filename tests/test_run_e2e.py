"""End-to-end: ``newsletter run`` as a real process, the whole product by itself.

A fixture feed is served over HTTP on 127.0.0.1, mail goes to a real aiosmtpd
server, and the digest cron is ``* * * * *`` with NEWSLETTER_DIGEST_CRON_SECOND=*/2,
so the real CronTrigger fires within two seconds of start-up instead of at the next
minute boundary.  The process must import the feed, send the digest once, serve
the subscribe page on its port, and stop on SIGTERM with exit code 0 and a
consistent ledger (nothing left ``sending``) -- also when SIGTERM lands mid-send,
after which the queued rest is resumed and nobody gets the digest twice.
"""

from __future__ import annotations

import asyncio
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import feedparser
import pytest
from _timetable_support import (
    add_readers,
    delivery_counts,
    lease_row,
    processes,
    serve_directory,
    spawn,
    wait_for,
)
from conftest import OWN_FEEDS, RecordingHandler, SMTPServer, free_port, start_smtp
from sqlalchemy import func, select

from newsletter.config import load_settings
from newsletter.context import Context
from newsletter.models import DeliveryStatus, Issue, IssueStatus, Story
from newsletter.timetable import jobs

pytestmark = pytest.mark.slow

FEED = OWN_FEEDS / "planet.xml"  # our own fixture: runs in a fresh clone too


@pytest.fixture
def feed_url() -> Iterator[str]:
    with serve_directory(OWN_FEEDS) as base:
        yield f"{base}/{FEED.name}"


def run_env(env: dict[str, str], smtp: SMTPServer, feed_url: str, **extra: str) -> dict[str, str]:
    return {
        **env,
        "NEWSLETTER_SMTP_URL": smtp.url,
        "NEWSLETTER_FEEDS": feed_url,
        "NEWSLETTER_TIMEZONE": "Europe/London",
        "NEWSLETTER_DIGEST_CRON": "* * * * *",
        "NEWSLETTER_DIGEST_CRON_SECOND": "*/2",
        **extra,
    }


def open_ctx(penv: dict[str, str]) -> Context:
    return Context.open(load_settings(penv, dotenv_path=None))


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return int(response.status), response.read().decode()


def answers(url: str) -> bool:
    try:
        return get(url)[0] == 200
    except OSError:
        return False


def test_run_sends_the_digest_serves_the_web_app_and_stops_cleanly(
    env: dict[str, str], smtp_server: SMTPServer, feed_url: str, tmp_path: Path
) -> None:
    penv = run_env(env, smtp_server, feed_url)
    ctx = open_ctx(penv)
    readers = add_readers(ctx, 3)
    port = free_port()
    titles = [e.title for e in feedparser.parse(FEED.read_bytes()).entries]
    with processes() as procs:
        proc = spawn(["run", "--port", str(port)], penv, tmp_path)
        procs.append(proc)
        proc.wait_log("timetable started")
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/subscribe"), 30, "the web app")
        status, page = get(f"http://127.0.0.1:{port}/subscribe")
        assert status == 200 and "<form" in page

        wait_for(lambda: len(smtp_server.messages) >= 3, 60, "the digest to arrive")
        proc.wait_log("digest: sent for ")
        proc.wait_log("digest: already sent today")  # the next fire, 2 s later

        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.log
    log = proc.log
    assert "web app stopped; stopping the timetable" in log, log
    assert "timetable stopped; lease released" in log
    assert "Traceback" not in log, log

    by_reader = smtp_server.handler.by_recipient()
    assert sorted(by_reader) == sorted(readers)
    assert all(len(got) == 1 for got in by_reader.values())
    body = smtp_server.messages[0].message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert any(title.split(" - ")[-1][:40] in body for title in titles), body[:2000]

    assert delivery_counts(ctx) == {DeliveryStatus.SENT: 3}  # nothing left `sending`
    with ctx.db.read() as session:
        assert session.scalar(select(Issue.status)) == IssueStatus.SENT
        featured = session.scalar(select(func.count()).select_from(Story).where(Story.featured))
    assert featured == 6  # imported from the feed as featured; its 3 adverts left out
    assert lease_row(ctx) is None
    lines = [line for line in log.splitlines() if "newsletter.scheduler: digest:" in line]
    assert sum("digest: sent" in line for line in lines) == 1
    ctx.close()


class SlowHandler(RecordingHandler):
    """Accepts everything, 50 ms per message: a send long enough to interrupt."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(0.05)
        return await super().handle_DATA(server, session, envelope)


def test_sigterm_mid_send_finishes_the_batch_and_leaves_a_resumable_ledger(
    env: dict[str, str], feed_url: str, tmp_path: Path
) -> None:
    smtp = start_smtp(SlowHandler())
    try:
        penv = run_env(
            env,
            smtp,
            feed_url,
            NEWSLETTER_SMTP_CONNECTIONS="1",
            NEWSLETTER_BATCH_SIZE="10",
        )
        ctx = open_ctx(penv)
        readers = add_readers(ctx, 60)
        with processes() as procs:
            proc = spawn(["run", "--port", str(free_port())], penv, tmp_path)
            procs.append(proc)
            wait_for(lambda: len(smtp.messages) >= 10, 60, "the send to be under way")
            proc.signal(signal.SIGTERM)
            assert proc.wait(30) == 0, proc.log
        counts = delivery_counts(ctx)
        assert DeliveryStatus.SENDING not in counts, counts  # a consistent ledger
        sent_before = counts.get(DeliveryStatus.SENT, 0)
        assert 10 <= sent_before < 60 and counts[DeliveryStatus.QUEUED] == 60 - sent_before
        assert len(smtp.messages) == sent_before  # every message handed over was recorded
        assert "digest: sending for " in proc.log, proc.log  # the one line, with counts

        resumed = jobs.run_upkeep(ctx)  # what the next start-up does
        assert [s.issue_id for s in resumed.resumed] == [1]
        assert delivery_counts(ctx) == {DeliveryStatus.SENT: 60}
        by_reader = smtp.handler.by_recipient()
        assert sorted(by_reader) == sorted(readers)
        assert all(len(got) == 1 for got in by_reader.values())  # nobody twice
        ctx.close()
    finally:
        smtp.controller.stop()
