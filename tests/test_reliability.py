"""Real processes against a real SMTP server: SIGKILL and resume, faults, two senders.

The sender runs as ``python -m newsletter`` in a subprocess, exactly as an operator
runs it; the aiosmtpd server runs in this process so the tests can see what it
received and change its behaviour between runs.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _delivery_support import FaultHandler, add_subscribers, counts, email_for
from conftest import SMTPServer, start_smtp
from sqlalchemy import select

from newsletter.config import Settings
from newsletter.context import Context
from newsletter.delivery.engine import FLUSH_EVERY
from newsletter.models import Delivery, DeliveryStatus, Issue, IssueStatus, Subscriber
from newsletter.stories.store import import_sources

pytestmark = pytest.mark.slow

EXAMPLE_FEED = Path(__file__).resolve().parent.parent / "newsletter" / "examples" / "stories.xml"
CONNECTIONS = 4
WINDOW = max(16, 8 * CONNECTIONS)  # engine.Run.window for 4 connections
DUPLICATE_BOUND = FLUSH_EVERY + WINDOW  # accepted but unrecorded at any instant


@pytest.fixture
def world(
    env: dict[str, str], settings: Settings, tmp_path: Path
) -> Iterator[Callable[..., tuple[Context, SMTPServer, dict[str, str]]]]:
    """A database with featured stories and N readers, a server, and the sender's env."""
    made: list[tuple[Context, SMTPServer]] = []

    def make(
        n: int, handler: FaultHandler | None = None, **extra: str
    ) -> tuple[Context, SMTPServer, dict[str, str]]:
        ctx = Context.open(settings)
        with ctx.db.write() as session:
            assert import_sources(session, [str(EXAMPLE_FEED)], feature=True).ok
        add_subscribers(ctx, n)
        server = start_smtp(handler or FaultHandler(lean=True))
        process_env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
        process_env.update(env)
        process_env.update(
            {
                "NEWSLETTER_SMTP_URL": server.url,
                "NEWSLETTER_SMTP_CONNECTIONS": str(CONNECTIONS),
                "NEWSLETTER_RETRY_BASE_SECONDS": "0.1",
                "PYTHONUNBUFFERED": "1",
                "COLUMNS": "120",
                **extra,
            }
        )
        made.append((ctx, server))
        return ctx, server, process_env

    yield make
    for ctx, server in made:
        server.controller.stop()
        ctx.close()


def newsletter(tmp_path: Path, process_env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "newsletter", *args],
        cwd=tmp_path,
        env=process_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def ledger_rows(ctx: Context) -> dict[str, tuple[DeliveryStatus, str | None]]:
    with ctx.db.read() as session:
        rows = session.execute(
            select(Subscriber.email, Delivery.status, Delivery.message_id).join(
                Subscriber, Subscriber.id == Delivery.subscriber_id
            )
        ).all()
    return {e: (DeliveryStatus(s), m) for e, s, m in rows}


def test_sigkill_three_times_then_resume(
    world: Callable[..., tuple[Context, SMTPServer, dict[str, str]]], tmp_path: Path
) -> None:
    n = 5000
    ctx, server, process_env = world(n)
    rng = random.Random()
    kill_points = sorted(rng.sample(range(300, n - 500), 3))
    proc = newsletter(tmp_path, process_env, "send", "--yes")
    for point in kill_points:
        deadline = time.monotonic() + 90
        while len(server.messages) < point and proc.poll() is None:
            assert time.monotonic() < deadline, "the sender made no progress"
            time.sleep(0.005)
        assert proc.poll() is None, finish(proc)[1]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc = newsletter(tmp_path, process_env, "issues", "resume", "1")
    code, out = finish(proc)
    assert code == 0, out

    received = counts(server.messages)
    everyone = {email_for(i) for i in range(n)}
    assert set(received) == everyone  # nobody skipped
    duplicates = sum(received.values()) - n
    print(f"\nkilled at {kill_points} messages; duplicates: {duplicates}")
    assert duplicates <= 3 * DUPLICATE_BOUND
    # the ledger agrees with the server: all sent, each with a Message-ID the server got
    ids_seen: dict[str, set[str]] = {}
    for m in server.messages:
        ids_seen.setdefault(m.rcpt_tos[0], set()).add(str(m.message["Message-ID"]))
    rows = ledger_rows(ctx)
    assert len(rows) == n
    for address, (status, message_id) in rows.items():
        assert status is DeliveryStatus.SENT
        assert message_id in ids_seen[address]
    with ctx.db.read() as session:
        assert session.scalar(select(Issue.status)) is IssueStatus.SENT


def test_faults_through_the_real_command(
    world: Callable[..., tuple[Context, SMTPServer, dict[str, str]]], tmp_path: Path
) -> None:
    n = 300
    bounced = {email_for(7), email_for(150)}
    handler = FaultHandler(
        lean=True,
        bounce=bounced,
        greylist={email_for(20), email_for(21)},
        drop_every=40,  # 421 mid-session and the connection closes
        stall={email_for(99)},  # no reply until after the client's timeout
        stall_seconds=2.0,
    )
    ctx, server, process_env = world(n, handler, NEWSLETTER_SMTP_TIMEOUT="0.5")
    code, out = finish(newsletter(tmp_path, process_env, "send", "--yes"))
    assert code == 0, out
    assert "Issue #1 is sent." in out
    received = counts(server.messages)
    assert received == {email_for(i): 1 for i in range(n) if email_for(i) not in bounced}
    assert handler.drops >= 5
    # refused (or stalled) once, then accepted; a 421 may hit the retry's DATA too
    assert handler.tries[email_for(99)] >= 2 and handler.tries[email_for(20)] >= 2
    rows = ledger_rows(ctx)
    assert {a for a, (s, _) in rows.items() if s is DeliveryStatus.BOUNCED} == bounced
    assert sum(s is DeliveryStatus.SENT for s, _ in rows.values()) == n - 2
    with ctx.db.read() as session:
        statuses = dict(session.execute(select(Subscriber.email, Subscriber.status)).all())
    assert {a for a, s in statuses.items() if s.value == "bounced"} == bounced


def test_policy_refusal_pauses_then_resumes(
    world: Callable[..., tuple[Context, SMTPServer, dict[str, str]]], tmp_path: Path
) -> None:
    n = 200
    handler = FaultHandler(lean=True, policy={email_for(60)})
    ctx, server, process_env = world(n, handler)
    code, out = finish(newsletter(tmp_path, process_env, "send", "--yes"))
    assert code == 3, out
    assert "554 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using zen" in out
    with ctx.db.read() as session:
        issue = session.scalars(select(Issue)).one()
        assert issue.status is IssueStatus.PAUSED and "5.7.1" in (issue.status_reason or "")
    code, out = finish(newsletter(tmp_path, process_env, "send", "--yes"))
    assert code == 3, out  # still refused: still paused, nothing lost
    handler.policy.clear()  # the operator got the IP delisted
    code, out = finish(newsletter(tmp_path, process_env, "issues", "resume", "1"))
    assert code == 0, out
    assert counts(server.messages) == {email_for(i): 1 for i in range(n)}


def test_two_senders_at_the_same_moment(
    world: Callable[..., tuple[Context, SMTPServer, dict[str, str]]], tmp_path: Path
) -> None:
    n = 1500
    ctx, server, process_env = world(n)
    procs = [newsletter(tmp_path, process_env, "send", "--yes") for _ in range(2)]
    results = [finish(p) for p in procs]
    codes = [code for code, _ in results]
    assert codes == [0, 0], "\n".join(
        out for _, out in results
    )  # the second joins, or finds it done
    received = counts(server.messages)
    assert received == {email_for(i): 1 for i in range(n)}
    with ctx.db.read() as session:
        assert len(session.scalars(select(Issue)).all()) == 1


def test_sigterm_stops_cleanly_and_resume_sends_no_duplicates(
    world: Callable[..., tuple[Context, SMTPServer, dict[str, str]]], tmp_path: Path
) -> None:
    n = 1200
    ctx, server, process_env = world(n, NEWSLETTER_SEND_RATE="600")
    proc = newsletter(tmp_path, process_env, "send", "--yes")
    deadline = time.monotonic() + 60
    while len(server.messages) < 200:
        assert proc.poll() is None and time.monotonic() < deadline, finish(proc)[1]
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc)
    assert code == 1, out
    assert "Stopping after the messages in flight" in out and "still queued" in out
    rows = ledger_rows(ctx)
    assert not any(s is DeliveryStatus.SENDING for s, _ in rows.values())
    assert sum(s is DeliveryStatus.SENT for s, _ in rows.values()) == len(server.messages)
    code, out = finish(newsletter(tmp_path, process_env, "send", "--yes"))  # resumes it
    assert code == 0, out
    assert counts(server.messages) == {email_for(i): 1 for i in range(n)}  # graceful: no dups
