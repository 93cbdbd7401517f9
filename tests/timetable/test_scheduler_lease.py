"""One timetable only: the ``scheduler`` lease, refusal, stand-by, loss and takeover.

In-process tests drive :class:`Timetable` with a short TTL; the last test is the
real thing: ``newsletter schedule`` subprocesses, one SIGKILLed, and the others
refusing (naming host and pid) until its lease expires, then taking over.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from _timetable_support import lease_row, processes, spawn, wait_for
from click.testing import CliRunner
from conftest import free_port

from newsletter import lease
from newsletter.cli import main
from newsletter.config import Settings
from newsletter.context import Context
from newsletter.models import utcnow
from newsletter.timetable.scheduler import LEASE_NAME, LeaseLost, Timetable

TTL = 0.9  # seconds; renewed every 0.3 s


@pytest.fixture
def lctx(make_settings: Callable[..., Settings]) -> Iterator[Context]:
    context = Context.open(make_settings(NEWSLETTER_SCHEDULER_LEASE_TTL=str(TTL)))
    yield context
    context.close()


OTHER = lease.Holder(token="other-process", host="elsewhere.example", pid=4242)


def hold_elsewhere(ctx: Context, seconds: float) -> None:
    """Another process (on another host) holds the timetable lease for ``seconds``."""
    with ctx.db.write() as session:
        row = session.get(lease.Lease, LEASE_NAME)
        if row is not None:  # steal it, as a process that saw it expire would
            row.holder, row.host, row.pid = OTHER.token, OTHER.host, OTHER.pid
            row.expires_at = utcnow() + timedelta(seconds=seconds)
        else:
            lease.acquire(session, LEASE_NAME, OTHER, timedelta(seconds=seconds))


def test_schedule_refuses_and_names_the_holder(cli_env: dict[str, str], tmp_path: Path) -> None:
    ctx = Context.open(Settings(database_url=cli_env["NEWSLETTER_DATABASE_URL"]))
    hold_elsewhere(ctx, 60)
    ctx.close()
    result = CliRunner().invoke(main, ["schedule"])
    assert result.exit_code == 1, result.output
    assert "pid 4242 on elsewhere.example" in result.output
    assert "timetable not started" in result.output
    listed = CliRunner().invoke(main, ["schedule", "--list"])  # needs no lease
    assert listed.exit_code == 0, listed.output
    assert "running as pid 4242 on elsewhere.example" in listed.output
    assert listed.output.splitlines()[0].startswith("digest  next ")


def test_background_timetable_stands_by_then_takes_over(lctx: Context) -> None:
    hold_elsewhere(lctx, 2.5)
    timetable = Timetable(lctx, blocking=False)
    timetable.start_background()
    try:
        time.sleep(1.0)
        assert not timetable.running  # the web app would be serving meanwhile
        wait_for(lambda: timetable.running, 8, "the takeover after the lease expired")
        row = lease_row(lctx)
        assert row is not None and row.pid == timetable.holder.pid
        assert row.holder == timetable.holder.token
    finally:
        timetable.close()
    assert lease_row(lctx) is None  # released on a clean stop: a restart need not wait


def test_a_lost_lease_stops_the_jobs_and_goes_back_to_standby(lctx: Context) -> None:
    timetable = Timetable(lctx, blocking=False)
    timetable.start_background()
    try:
        wait_for(lambda: timetable.running, 5, "the timetable to start")
        hold_elsewhere(lctx, 3.0)  # e.g. we were frozen longer than the TTL
        wait_for(lambda: not timetable.running, 5, "the jobs to stop")
        assert timetable.stop.is_set()  # a send in progress was told to stop
        row = lease_row(lctx)
        assert row is not None and row.pid == OTHER.pid  # their lease is left alone
        wait_for(lambda: timetable.running, 8, "the takeover once theirs expired")
    finally:
        timetable.close()


def test_blocking_timetable_exits_when_its_lease_is_lost(lctx: Context) -> None:
    timetable = Timetable(lctx, blocking=True)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            timetable.run_blocking()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: timetable.running, 5, "the timetable to start")
    with pytest.raises(lease.LeaseHeld):  # a second one in the same database
        Timetable(lctx, blocking=True).run_blocking()
    hold_elsewhere(lctx, 30)
    thread.join(10)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], LeaseLost)


@pytest.mark.slow
def test_takeover_after_the_holder_is_killed(env: dict[str, str], tmp_path: Path) -> None:
    """Real processes.  `schedule` A holds the lease; `schedule` B is refused and names
    A; `run` R serves the web app on standby.  A is SIGKILLed: its lease blocks
    everyone until it expires, then R takes the timetable over.  R is SIGKILLed in
    turn and a `schedule` D started after R's lease expired takes over; SIGINT
    stops D with exit code 0 and releases the lease."""
    ttl = 3.0
    penv = {**env, "NEWSLETTER_SCHEDULER_LEASE_TTL": str(ttl)}
    ctx = Context.open(Settings(database_url=env["NEWSLETTER_DATABASE_URL"]))
    host = socket.gethostname()
    try:
        with processes() as procs:
            a = spawn(["schedule"], penv, tmp_path)
            procs.append(a)
            a.wait_log("timetable started")
            row = lease_row(ctx)
            assert row is not None and (row.pid, row.host) == (a.pid, host)

            b = spawn(["schedule"], penv, tmp_path)
            r = spawn(["run", "--port", str(free_port())], penv, tmp_path)
            procs += [b, r]
            assert b.wait(30) == 1
            assert f"held by pid {a.pid} on {host}" in b.log
            r.wait_log(f"timetable not started: scheduler is held by pid {a.pid} on {host}")
            r.wait_log("serving the web app only and standing by")

            a.signal(signal.SIGKILL)
            a.wait(10)
            with pytest.raises(lease.LeaseHeld, match=f"pid {a.pid}"), ctx.db.write() as s:
                lease.acquire(s, LEASE_NAME, OTHER, timedelta(seconds=ttl))  # not yet expired
            r.wait_log("taking over", timeout=ttl + 15)
            r.wait_log("timetable started")
            row = lease_row(ctx)
            assert row is not None and row.pid == r.pid

            r.signal(signal.SIGKILL)
            r.wait(10)
            wait_for(
                lambda: (lr := lease_row(ctx)) is not None and lr.expires_at < utcnow(),
                ttl + 5,
                "the killed holder's lease to expire",
            )
            d = spawn(["schedule"], penv, tmp_path)
            procs.append(d)
            d.wait_log("timetable started")
            row = lease_row(ctx)
            assert row is not None and row.pid == d.pid

            d.signal(signal.SIGINT)  # Ctrl+C stops as cleanly as SIGTERM
            assert d.wait(30) == 0, d.log
            assert "SIGINT received: stopping" in d.log
            assert lease_row(ctx) is None
    finally:
        ctx.close()
