"""Several real sender processes on one issue: a slow recording relay and the helpers.

The relay is aiosmtpd in the test process (``SlowRelay``: it waits a little before
answering DATA, as a relay across a network would, and notes when each message
arrived); the senders are ``python -m newsletter send`` / ``worker`` subprocesses
with this test's database (SQLite file or PostgreSQL) in their environment.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _delivery_support import FaultHandler, add_subscribers
from conftest import SMTPServer, start_smtp
from sqlalchemy import func, select

from newsletter.context import Context
from newsletter.models import Delivery, DeliveryStatus
from newsletter.stories import import_sources

EXAMPLE_FEED = Path(__file__).resolve().parent.parent / "newsletter" / "examples" / "stories.xml"


class SlowRelay(FaultHandler):
    """Keeps headers only; waits ``delay`` seconds before its reply to DATA."""

    def __init__(self, delay: float = 0.01, **options: Any) -> None:
        super().__init__(lean=True, **options)
        self.delay = delay
        self.arrivals: list[float] = []  # monotonic time of each accepted message

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        reply = await super().handle_DATA(server, session, envelope)
        if reply.startswith("250"):
            with self.lock:
                self.arrivals.append(time.monotonic())
        return reply


@dataclass
class Fleet:
    """The database, the relay, and the sender processes of one test."""

    ctx: Context
    server: SMTPServer
    env: dict[str, str]
    cwd: Path
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def relay(self) -> SlowRelay:
        handler = self.server.handler
        assert isinstance(handler, SlowRelay)
        return handler

    def start(self, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "newsletter", *args],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def wait_for(self, what: Callable[[], bool], procs_alive: bool = True) -> None:
        deadline = time.monotonic() + 120
        while not what():
            if procs_alive:
                for p in self.procs:
                    assert p.poll() is None, finish(p)[1]
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.01)

    def senders_of_sent_rows(self) -> dict[str, int]:
        """How many rows each sender delivered (the ledger keeps the claimant)."""
        with self.ctx.db.read() as session:
            rows = session.execute(
                select(Delivery.claimed_by, func.count())
                .where(Delivery.status == DeliveryStatus.SENT)
                .group_by(Delivery.claimed_by)
            ).all()
        return {str(s): int(n) for s, n in rows}

    def claims_of(self, pid: int) -> int:
        """Rows the process ``pid`` holds ``sending`` right now."""
        with self.ctx.db.read() as session:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(Delivery)
                    .where(
                        Delivery.status == DeliveryStatus.SENDING,
                        Delivery.claimed_by.like(f"%:{pid}:%"),
                    )
                )
                or 0
            )

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


def finish(proc: subprocess.Popen[str], timeout: float = 180) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def make_fleet(
    ctx: Context, env: dict[str, str], cwd: Path, n: int, relay: SlowRelay, **extra: str
) -> Fleet:
    """Featured stories, ``n`` readers, the relay, and the senders' environment."""
    with ctx.db.write() as session:
        assert import_sources(session, [str(EXAMPLE_FEED)], feature=True).ok
    add_subscribers(ctx, n)
    server = start_smtp(relay)
    process_env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    process_env.update(env)
    process_env.update(
        {
            "NEWSLETTER_SMTP_URL": server.url,
            "NEWSLETTER_SMTP_CONNECTIONS": "2",
            "NEWSLETTER_BATCH_SIZE": "20",
            "NEWSLETTER_LEASE_SECONDS": "3",
            "NEWSLETTER_RETRY_BASE_SECONDS": "0.1",
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "200",
            **extra,
        }
    )
    return Fleet(ctx, server, process_env, cwd)
