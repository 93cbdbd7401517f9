"""``newsletter schedule [--list]`` and ``newsletter run``: the timetable, alone or with web.

Both log one line per job run to stderr (INFO on the ``newsletter`` logger, even
without ``-v``: an unattended process that says nothing cannot be operated).
SIGTERM and SIGINT become a clean stop: the stop event is set so a send ends
after its current batch, the scheduler waits for its jobs, the lease is released
and the exit code is 0.  A second signal while stopping is logged and ignored;
``kill -9`` is the operator's escape hatch and leaves a resumable ledger anyway.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from ..context import Context
    from ..timetable import Timetable

from .server import check_listen, listen_error, web_options
from .state import AppState, SettingsError, check_signing, pass_state, require_real_settings

log = logging.getLogger("newsletter.scheduler")


def _log_job_runs() -> None:
    """Make the per-job log lines visible without ``-v``; keep APScheduler's chatter out."""
    logger = logging.getLogger("newsletter")
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


@contextmanager
def _stop_on_signals() -> Iterator[Callable[[], None]]:
    """Turn the first SIGTERM/SIGINT into KeyboardInterrupt in the main thread.

    Only the main thread can be interrupted, which is where the blocking scheduler
    and waitress run, and both end cleanly on KeyboardInterrupt.  Yields a function
    that puts the handlers back: ``web.serve`` installs its own SIGTERM handler, and
    once it has returned ours must be in place again so that a second signal during
    the shutdown cannot cut the current batch short.
    """
    received: list[str] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if received:
            log.warning("%s received while stopping; still finishing the current batch", name)
            return
        received.append(name)
        log.warning("%s received: stopping (a send in progress finishes its current batch)", name)
        raise KeyboardInterrupt

    def install() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, handler)

    def stopping() -> None:  # the web app stopped, whoever caught the signal
        received.append("stop")
        install()

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    install()
    try:
        yield stopping
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _timetable(ctx: Context, blocking: bool) -> Timetable:
    from ..config import ConfigError
    from ..timetable import Timetable

    try:
        return Timetable(ctx, blocking=blocking)
    except ConfigError as exc:  # the timetable's own settings are checked here
        raise SettingsError(str(exc)) from None


def _print_plan(state: AppState) -> None:
    from .. import lease
    from ..config import ConfigError
    from ..timetable import LEASE_NAME, planned_jobs

    ctx = state.ctx
    try:
        plan = planned_jobs(ctx)
    except ConfigError as exc:
        raise SettingsError(str(exc)) from None
    width = max(len(job.id) for job in plan)
    for job in plan:
        if job.next_run is not None:
            when = "next " + job.next_run.strftime("%Y-%m-%d %H:%M:%S %Z (%a)")
        else:
            when = "at start-up, then at the interval"
        click.echo(f"{job.id:<{width}}  {when:<36}  {job.name}")
    with ctx.db.read() as session:
        holder = lease.current(session, LEASE_NAME)
        if holder is None:
            status = "timetable: not running (the lease is free)"
        else:
            expires = holder.expires_at.astimezone(ctx.settings.tz)
            status = (
                f"timetable: running as pid {holder.pid} on {holder.host} "
                f"(lease until {expires:%H:%M:%S %Z})"
            )
    click.echo(status)


@click.command("schedule")
@click.option(
    "--list",
    "list_only",
    is_flag=True,
    help="Print the jobs with their next run times in local time, and exit.",
)
@pass_state
def schedule_command(state: AppState, list_only: bool) -> None:
    """Run the timetable in the foreground: daily digest, feed polling, upkeep.

    Only one timetable runs per database: if another process holds the lease this
    exits with status 1 and says which host and pid has it.
    """

    from .. import lease
    from ..timetable import LeaseLost

    if list_only:
        _print_plan(state)
        return
    ctx = state.ctx
    require_real_settings(ctx, "run the timetable")
    check_signing(ctx.settings)  # its digests sign: a bad key fails now, not at 07:00
    _log_job_runs()
    timetable = _timetable(ctx, blocking=True)
    with _stop_on_signals():
        try:
            timetable.run_blocking()
        except KeyboardInterrupt:
            return
        except lease.LeaseHeld as exc:
            raise click.ClickException(
                f"timetable not started: {exc} (only one timetable may run; start this "
                f"again once that process has stopped or its lease has expired)"
            ) from None
        except LeaseLost as exc:
            raise click.ClickException(f"timetable stopped: {exc}") from None


@click.command("run")
@web_options
@pass_state
def run_command(
    state: AppState, host: str, port: int, threads: int, trusted_proxy: str | None
) -> None:
    """Serve the web app and run the timetable in one process.

    If another process already runs the timetable, this one serves the web app
    only, says so in the log, and takes the timetable over when the other's lease
    expires (so two run processes behind a load balancer are safe).
    """
    from ..web import create_app, serve

    ctx = state.ctx
    require_real_settings(ctx, "run the timetable")
    check_signing(ctx.settings)
    check_listen(host, port)
    _log_job_runs()
    timetable = _timetable(ctx, blocking=False)
    app = create_app(ctx)
    with _stop_on_signals() as stopping:
        timetable.start_background()
        try:
            log.info("web app: starting on http://%s:%d/", host, port)
            serve(app, host=host, port=port, threads=threads, trusted_proxy=trusted_proxy)
        except KeyboardInterrupt:
            pass
        except OSError as exc:
            raise click.ClickException(listen_error(host, port, exc)) from None
        finally:
            stopping()
            log.info("web app stopped; stopping the timetable")
            timetable.close()


COMMANDS: list[click.Command] = [schedule_command, run_command]
