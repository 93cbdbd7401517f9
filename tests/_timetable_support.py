"""Helpers for the timetable tests: readers and stories, a fixture feed server, processes.

All real: subscribers and stories go through the domain functions, feeds are the
shared fixture files served by ``http.server`` on 127.0.0.1 (which answers
If-Modified-Since with 304), and ``newsletter`` runs as a real subprocess whose
stderr is collected by a thread so a test can wait for a log line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from newsletter.context import Context
from newsletter.models import Delivery, DeliveryStatus, Issue, Lease
from newsletter.stories import store as stories
from newsletter.subscribers import store as subscribers

ROOT = Path(__file__).resolve().parent.parent


def add_readers(ctx: Context, count: int, domain: str = "example.org") -> list[str]:
    emails = [f"reader{i:04d}@{domain}" for i in range(count)]
    with ctx.db.write() as session:
        for email in emails:
            subscribers.add_subscriber(session, email, name=f"Reader {email[6:10]}", confirmed=True)
    return emails


def add_featured(ctx: Context, count: int, tag: str = "a") -> None:
    with ctx.db.write() as session:
        for i in range(count):
            stories.add_story(
                session,
                f"Story {tag}{i}: the day's news",
                f"https://news.example.com/{tag}/{i}",
                summary=f"Summary of story {tag}{i}.",
                feature=True,
            )


def issue_count(ctx: Context) -> int:
    with ctx.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(Issue)) or 0)


def delivery_counts(ctx: Context) -> dict[DeliveryStatus, int]:
    with ctx.db.read() as session:
        rows = session.execute(
            select(Delivery.status, func.count()).group_by(Delivery.status)
        ).all()
    return {DeliveryStatus(status): int(n) for status, n in rows}


@dataclass(frozen=True)
class LeaseRow:
    holder: str
    host: str
    pid: int
    expires_at: datetime


def lease_row(ctx: Context, name: str = "scheduler") -> LeaseRow | None:
    """The lease row as stored (expired or not), detached from any session."""
    with ctx.db.read() as session:
        row = session.get(Lease, name, populate_existing=True)
        return None if row is None else LeaseRow(row.holder, row.host, row.pid, row.expires_at)


def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve ``directory`` over HTTP on 127.0.0.1; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Proc:
    """A running ``newsletter`` subprocess with its stderr collected line by line."""

    popen: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def log(self) -> str:
        with self.lock:
            return "".join(self.lines)

    def wait_log(self, text: str, timeout: float = 30.0) -> None:
        def seen() -> bool:
            if text in self.log:
                return True
            if self.popen.poll() is not None:
                time.sleep(0.2)  # let the reader thread drain the pipe
                if text in self.log:
                    return True
                raise AssertionError(
                    f"process exited ({self.popen.returncode}) before logging {text!r}:\n{self.log}"
                )
            return False

        try:
            wait_for(seen, timeout, f"log line {text!r}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- log ---\n{self.log}") from None

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.popen.wait(timeout)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)


def spawn(args: list[str], env: dict[str, str], cwd: Path) -> Proc:
    """Start ``python -m newsletter ARGS`` with exactly these NEWSLETTER_* settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    clean.update(env)
    clean["PYTHONUNBUFFERED"] = "1"
    popen = subprocess.Popen(
        [sys.executable, "-m", "newsletter", *args],
        env=clean,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    proc = Proc(popen)

    def pump() -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            with proc.lock:
                proc.lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    return proc


@contextmanager
def processes() -> Iterator[list[Proc]]:
    """Collect spawned processes and kill any still running when the test ends."""
    started: list[Proc] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.stop()
