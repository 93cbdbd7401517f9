"""Many senders, one issue (DESIGN "Delivery semantics" 7), as real processes.

A ``send --yes`` and two ``worker --until-idle`` share one issue through per-batch
claims; a relay that takes a little time per message makes them overlap.  Runs on
SQLite and, with NEWSLETTER_TEST_DATABASE_URL, on PostgreSQL (SKIP LOCKED claims).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _delivery_support import counts, email_for, make_issue
from _senders_support import Fleet, SlowRelay, finish, make_fleet
from click.testing import CliRunner
from sqlalchemy import select

from newsletter.cli import main
from newsletter.config import Settings
from newsletter.context import Context
from newsletter.delivery.engine import FLUSH_EVERY
from newsletter.models import Delivery, DeliveryStatus, Issue, IssueStatus

pytestmark = pytest.mark.slow

WINDOW = 16  # engine.Pusher.window for 2 connections
IN_FLIGHT = FLUSH_EVERY + WINDOW  # accepted but not yet recorded, per sender


@pytest.fixture
def fleet_ctx(settings: Settings) -> Iterator[Context]:
    ctx = Context.open(settings)
    yield ctx
    ctx.close()


@pytest.fixture
def fleets(fleet_ctx: Context, env: dict[str, str], tmp_path: Path) -> Iterator[list[Fleet]]:
    made: list[Fleet] = []
    yield made
    for fleet in made:
        fleet.stop_all()
        fleet.server.controller.stop()


def three_senders(fleet: Fleet, after: int = 20) -> list[subprocess.Popen[str]]:
    """``send --yes`` first (it creates the issue), then two workers once it is going."""
    send = fleet.start("send", "--yes")
    fleet.wait_for(lambda: len(fleet.server.messages) >= after)
    workers = [fleet.start("worker", "--until-idle") for _ in range(2)]
    return [send, *workers]


def issue_status(ctx: Context) -> IssueStatus:
    with ctx.db.read() as session:
        status = session.scalar(select(Issue.status))
    assert status is not None
    return status


def test_three_senders_reach_everyone_exactly_once(
    fleet_ctx: Context, env: dict[str, str], tmp_path: Path, fleets: list[Fleet]
) -> None:
    n = 900
    fleet = make_fleet(fleet_ctx, env, tmp_path, n, SlowRelay(delay=0.01))
    fleets.append(fleet)
    procs = three_senders(fleet)
    results = [finish(p) for p in procs]
    assert [code for code, _ in results] == [0, 0, 0], "\n".join(o for _, o in results)
    assert counts(fleet.server.messages) == {email_for(i): 1 for i in range(n)}
    shares = fleet.senders_of_sent_rows()
    assert len(shares) == 3 and sum(shares.values()) == n, shares  # all three did work
    assert issue_status(fleet_ctx) is IssueStatus.SENT
    assert "Issue #1 is sent." in results[0][1] or "Issue #1 sent" in results[0][1]
    with fleet_ctx.db.read() as session:
        issue = session.scalars(select(Issue)).one()
        assert issue.finished_at is not None and issue.status_reason is None


def test_kill_9_of_one_sender_loses_nobody(
    fleet_ctx: Context, env: dict[str, str], tmp_path: Path, fleets: list[Fleet]
) -> None:
    n = 900
    fleet = make_fleet(fleet_ctx, env, tmp_path, n, SlowRelay(delay=0.01))
    fleets.append(fleet)
    send, victim, other = three_senders(fleet)
    fleet.wait_for(lambda: fleet.claims_of(victim.pid) > 0)  # it holds rows in flight
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    results = [finish(send), finish(other)]
    assert [code for code, _ in results] == [0, 0], "\n".join(o for _, o in results)
    received = counts(fleet.server.messages)
    assert set(received) == {email_for(i) for i in range(n)}  # 0 missing
    assert sum(received.values()) - n <= IN_FLIGHT  # duplicates: the victim's in-flight only
    with fleet_ctx.db.read() as session:
        statuses = set(session.scalars(select(Delivery.status)))
    assert statuses == {DeliveryStatus.SENT}
    assert issue_status(fleet_ctx) is IssueStatus.SENT


def _stops_everyone(fleet: Fleet, procs: list[subprocess.Popen[str]]) -> list[tuple[int, str]]:
    results = [finish(p) for p in procs]
    at_exit = len(fleet.server.messages)
    time.sleep(1.0)  # nobody is left sending: nothing more arrives
    assert len(fleet.server.messages) == at_exit
    return results


def test_cancel_reaches_every_sender(
    fleet_ctx: Context, env: dict[str, str], tmp_path: Path, fleets: list[Fleet]
) -> None:
    n = 3000
    fleet = make_fleet(fleet_ctx, env, tmp_path, n, SlowRelay(delay=0.01))
    fleets.append(fleet)
    procs = three_senders(fleet)
    fleet.wait_for(lambda: len(fleet.senders_of_sent_rows()) == 3)  # all three are sending
    result = CliRunner().invoke(main, ["issues", "cancel", "1", "--yes"], env=fleet.env)
    assert result.exit_code == 0, result.output
    before = len(fleet.server.messages)
    results = _stops_everyone(fleet, procs)
    assert results[0][0] == 1 and "was cancelled" in results[0][1], results[0][1]
    assert [code for code, _ in results[1:]] == [0, 0]
    assert len(fleet.server.messages) - before <= 3 * WINDOW  # only what was in flight
    assert issue_status(fleet_ctx) is IssueStatus.CANCELLED
    with fleet_ctx.db.read() as session:
        left = session.scalars(select(Delivery.status).where(Delivery.status == "sending")).all()
    assert left == []


def test_a_policy_refusal_pauses_every_sender(
    fleet_ctx: Context, env: dict[str, str], tmp_path: Path, fleets: list[Fleet]
) -> None:
    n = 3000
    relay = SlowRelay(delay=0.01)
    fleet = make_fleet(fleet_ctx, env, tmp_path, n, relay)
    fleets.append(fleet)
    procs = three_senders(fleet)
    fleet.wait_for(lambda: len(fleet.senders_of_sent_rows()) == 3)
    relay.policy.update(email_for(i) for i in range(n))  # 554 5.7.1 from now on
    before = len(fleet.server.messages)
    results = _stops_everyone(fleet, procs)
    assert results[0][0] == 3 and "PAUSED" in results[0][1], results[0][1]
    assert len(fleet.server.messages) - before <= 3 * WINDOW
    assert issue_status(fleet_ctx) is IssueStatus.PAUSED
    assert len(fleet.server.messages) < n


def test_the_send_rate_holds_for_the_deployment_with_three_senders(
    fleet_ctx: Context, env: dict[str, str], tmp_path: Path, fleets: list[Fleet]
) -> None:
    """NEWSLETTER_SEND_RATE=80 with three senders: 80/s in all, not 80/s each."""
    rate, n, window = 80, 1000, 6.0
    relay = SlowRelay(delay=0.005)
    fleet = make_fleet(fleet_ctx, env, tmp_path, n, relay, NEWSLETTER_SEND_RATE=str(rate))
    fleets.append(fleet)
    procs = three_senders(fleet)
    fleet.wait_for(lambda: len(fleet.senders_of_sent_rows()) == 3)  # all three are sending
    start = time.monotonic()
    fleet.wait_for(lambda: time.monotonic() > start + window)
    results = [finish(p) for p in procs]
    assert [code for code, _ in results] == [0, 0, 0], "\n".join(o for _, o in results)
    assert counts(fleet.server.messages) == {email_for(i): 1 for i in range(n)}
    in_window = sum(1 for t in relay.arrivals if start <= t < start + window)
    print(f"\n{in_window} messages in {window:.0f} s with three senders (limit {rate}/s)")
    assert abs(in_window - rate * window) <= 0.05 * rate * window, in_window


def test_a_worker_waits_for_the_next_issue_and_stops_on_sigterm(
    fleet_ctx: Context, env: dict[str, str], tmp_path: Path, fleets: list[Fleet]
) -> None:
    fleet = make_fleet(fleet_ctx, env, tmp_path, 40, SlowRelay(delay=0))
    fleets.append(fleet)
    idle = fleet.start("worker", "--until-idle")
    code, out = finish(idle)
    assert code == 0 and "Nothing left to claim" in out, out  # nothing is sending
    fleet.procs.remove(idle)
    worker = fleet.start("worker", "--poll", "0.2")
    time.sleep(0.5)  # it is looking for work, finds none, and keeps waiting
    assert worker.poll() is None
    issue_id = make_issue(fleet_ctx)  # an issue starts sending (the timetable, a send)
    fleet.wait_for(lambda: len(fleet.server.messages) == 40)
    fleet.wait_for(lambda: issue_status(fleet_ctx) is IssueStatus.SENT)
    worker.send_signal(signal.SIGTERM)
    code, out = finish(worker)
    assert code == 0, out
    assert f"Issue #{issue_id} sent: 40 sent" in out
    assert counts(fleet.server.messages) == {email_for(i): 1 for i in range(40)}


def test_the_daily_limit_holds_exactly_with_three_senders(
    fleet_ctx: Context, env: dict[str, str], tmp_path: Path, fleets: list[Fleet]
) -> None:
    """NEWSLETTER_DAILY_LIMIT with three senders claiming batches: the limit, never more.

    Each sender asks for its allowance in the transaction that claims a batch, and
    the rows the others have claimed (``sending``) count as used: 455 is not a
    multiple of the batch size (20), so the last claims are cut to what is left.
    """
    n, limit = 700, 455
    relay = SlowRelay(delay=0.05)
    fleet = make_fleet(fleet_ctx, env, tmp_path, n, relay, NEWSLETTER_DAILY_LIMIT=str(limit))
    fleets.append(fleet)
    procs = three_senders(fleet)
    results = [finish(p) for p in procs]
    assert results[0][0] == 1 and "until tomorrow" in results[0][1], results[0][1]
    assert [code for code, _ in results[1:]] == [0, 0], "\n".join(o for _, o in results)
    received = counts(fleet.server.messages)
    assert len(received) == limit and set(received.values()) == {1}  # exactly the quota
    shares = fleet.senders_of_sent_rows()
    assert len(shares) == 3 and sum(shares.values()) == limit, shares  # all three did work
    with fleet_ctx.db.read() as session:
        rows = session.execute(select(Delivery.status, Delivery.attempts)).all()
    assert sorted({(s, a) for s, a in rows}) == [
        (DeliveryStatus.QUEUED, 0),
        (DeliveryStatus.SENT, 1),
    ]
    assert sum(1 for s, _ in rows if s is DeliveryStatus.QUEUED) == n - limit
    assert issue_status(fleet_ctx) is IssueStatus.SENDING  # the rest wait for tomorrow
