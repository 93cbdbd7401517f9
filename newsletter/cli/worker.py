"""``newsletter worker [--until-idle]``: one more sender for whatever issue is sending.

Run any number of them, on any number of machines sharing the database (PostgreSQL
past one machine): each joins every issue that has work due, claims batches beside
the others until none is left, then waits for the next issue.  A worker that dies
loses nothing: its claims expire and the others take its rows back.
"""

from __future__ import annotations

import threading

import click

from .sendview import console, graceful_stop
from .state import AppState, check_signing, pass_state, require_real_settings

POLL_SECONDS = 2.0


@click.command("worker")
@click.option(
    "--until-idle", is_flag=True, help="Exit (0) once nothing is left to claim, instead of waiting."
)
@click.option(
    "--poll",
    type=click.FloatRange(0.1, 3600),
    default=POLL_SECONDS,
    show_default=True,
    help="Seconds between looks for an issue to send.",
)
@pass_state
def worker_command(state: AppState, until_idle: bool, poll: float) -> None:
    """Help send whatever issue is sending (any machine); wait for the next one.

    Ctrl-C / SIGTERM stop after the messages in flight; the rest stay queued for the
    other workers (or the next start).
    """
    require_real_settings(state.ctx, "run a worker")
    check_signing(state.ctx.settings)  # its messages sign: a bad key fails now, not mid-issue
    with graceful_stop() as stop:
        while not stop.is_set():
            worked = _work_once(state, stop)
            if until_idle and not worked:
                console.print("Nothing left to claim: exiting.")
                return
            if not worked:
                stop.wait(poll)


def _work_once(state: AppState, stop: threading.Event) -> bool:
    """Join every issue with due work once; False when there was none."""
    from .. import delivery
    from ..models import utcnow
    from ..timetable.jobs import describe_send, due_issue_ids

    ctx = state.ctx
    with ctx.db.read() as session:
        ids = due_issue_ids(session, utcnow())
    worked = False
    for issue_id in ids:
        if stop.is_set():
            break
        try:
            summary = delivery.send_issue(ctx, issue_id, stop=stop)
        except delivery.IssueStateError:
            continue  # finished, paused or cancelled meanwhile
        except OSError as exc:  # e.g. the Maildir outbox cannot be created
            raise click.ClickException(f"cannot send: {exc}") from None
        worked = worked or summary.run.sent + summary.run.failed + summary.run.bounced > 0
        console.print(f"Issue #{issue_id} {describe_send(summary)}", soft_wrap=True)
    return worked


COMMANDS: list[click.Command] = [worker_command]
