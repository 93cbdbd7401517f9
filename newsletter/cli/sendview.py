"""What ``send`` and ``issues`` show: the progress bar, the summary table, exit codes.

Kept apart from the commands so that ``send``, ``issues resume`` and
``issues retry-failed`` report a run in exactly the same words.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

import click

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import ProgressColumn, Task
    from rich.text import Text

    from ..context import Context
    from ..delivery import Progress as SendProgress
    from ..delivery import SendSummary


EXIT_FAILURES = 1  # the issue ended with failed deliveries or some still queued
EXIT_PAUSED = 3  # a 5.7.x refusal paused the issue: fix the cause, then resume
EXIT_BUSY = 75  # another process is sending this issue (EX_TEMPFAIL: try later)


class _LazyConsole:
    """rich's Console, made on first use: ``newsletter --help`` need not import rich."""

    def __init__(self) -> None:
        self._console: Console | None = None

    def real(self) -> Console:
        """The Console itself, for rich APIs that take one (``Progress(console=...)``)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(highlight=False)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real(), name)


_console = _LazyConsole()
console = cast("Console", _console)


def _rate_column() -> ProgressColumn:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class _RateColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            rate = task.fields.get("rate", 0.0)
            return Text(f"{rate:,.0f} msg/s", style="cyan")

    return _RateColumn()


class Unfinished(click.ClickException):
    """Failures, or deliveries still queued: ``Error: ...`` and exit code 1."""

    exit_code = EXIT_FAILURES


class Paused(click.ClickException):
    """A 5.7.x refusal paused the issue: exit code 3."""

    exit_code = EXIT_PAUSED


class Busy(click.ClickException):
    """Another process holds the issue's lease: exit code 75."""

    exit_code = EXIT_BUSY


@contextmanager
def graceful_stop() -> Iterator[threading.Event]:
    """Ctrl-C / SIGTERM finish the messages in flight and keep the rest queued.

    A second Ctrl-C interrupts at once (still safe: rows left ``sending`` are
    retried on resume).
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            signal.default_int_handler(signum, frame)
        stop.set()
        # A plain write: the signal may arrive while rich is half-way through printing
        # (or importing), and re-entering it from the handler would fail.
        os.write(2, "Stopping after the messages in flight…\n".encode())

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class LineProgress:
    """Progress as log lines when the output is not a terminal (cron, systemd, a pipe).

    A bar redrawn in place means nothing in a log file, and rich only prints it at
    the end: a line every ``every`` seconds or every 5 % says how the send is going.
    """

    def __init__(
        self,
        label: str,
        every: float = 10.0,
        step: float = 0.05,
        out: Callable[[str], None] | None = None,
    ) -> None:
        self.label = label
        self.every = every
        self.step = step
        self.out = out or _print_line
        self._last_time = time.monotonic()
        self._last_bucket = 0

    def __call__(self, p: SendProgress) -> None:
        now = time.monotonic()
        bucket = int(p.done / p.total / self.step) if p.total else 0
        if bucket <= self._last_bucket and now - self._last_time < self.every:
            return
        self._last_bucket = max(bucket, self._last_bucket)
        self._last_time = now
        self.out(self.line(p))

    def line(self, p: SendProgress) -> str:
        rate = p.sent_this_run / p.elapsed if p.elapsed > 0 else 0.0
        left = max(p.total - p.done, 0)
        eta = f"{left / rate:,.0f} s" if rate > 0 else "unknown"
        share = f" ({p.done / p.total:.0%})" if p.total else ""
        return (
            f"{self.label}: {p.done:,}/{p.total:,}{share} done, {p.sent:,} sent, "
            f"{p.failed + p.bounced:,} failed, {rate:,.1f} msg/s, ETA {eta}"
        )


def _print_line(text: str) -> None:
    click.echo(text)
    sys.stdout.flush()


def run_with_progress(
    label: str, action: Callable[[Callable[[SendProgress], None], threading.Event], SendSummary]
) -> SendSummary:
    """Run a send with a progress bar (a terminal) or progress lines (anything else)."""
    if not console.is_terminal:
        with graceful_stop() as stop:
            return _translated(lambda: action(LineProgress(label), stop))
    """Run a send with a rich progress bar; translate lease/state errors to clear exits."""

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[green]{task.fields[sent]:,} sent[/green] [red]{task.fields[failed]:,} failed"),
        _rate_column(),
        TimeRemainingColumn(),
    )
    bar_console = _console.real()
    with Progress(*columns, console=bar_console, transient=False) as bar, graceful_stop() as stop:
        task = bar.add_task(label, total=None, sent=0, failed=0, rate=0.0)

        def update(p: SendProgress) -> None:
            rate = p.sent_this_run / p.elapsed if p.elapsed > 0 else 0.0
            bar.update(
                task,
                total=p.total,
                completed=p.done,
                sent=p.sent,
                failed=p.failed + p.bounced,
                rate=rate,
            )

        summary = _translated(lambda: action(update, stop))
        bar.update(task, total=summary.total, completed=summary.total - summary.left_queued)
    return summary


def _translated(run: Callable[[], SendSummary]) -> SendSummary:
    """Lease and state errors as clear one-line exits."""
    from ..delivery import AlreadyFinished, IssueStateError, LeaseHeld

    try:
        return run()
    except LeaseHeld as held:
        raise Busy(
            f"another process is sending this issue: pid {held.pid} on {held.host} "
            f"(its lease runs until {held.expires_at:%H:%M:%S} UTC). Nothing was sent.",
        ) from None
    except AlreadyFinished:
        raise
    except IssueStateError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:  # e.g. the Maildir outbox cannot be created
        raise click.ClickException(f"cannot send: {exc}") from None


def check_issue(ctx: Context, issue_id: int) -> None:
    """Refuse an unknown or cancelled issue before any progress is drawn.

    (A sent issue may still have failed rows to retry: the send functions decide.)
    """
    from ..models import Issue, IssueStatus

    with ctx.db.read() as session:
        issue = session.get(Issue, issue_id)
        status = issue.status if issue is not None else None
    if status is None:
        raise click.ClickException(f"there is no issue {issue_id}")
    if status is IssueStatus.CANCELLED:
        raise click.ClickException(f"issue {issue_id} was cancelled; it cannot be sent")


def run_issue(
    ctx: Context,
    issue_id: int,
    label: str,
    fn: Callable[..., SendSummary],
    finished_ok: bool = False,
) -> None:
    """Run ``fn(ctx, issue_id, progress=..., stop=...)`` with the bar, then the summary.

    ``finished_ok``: an issue another process finished meanwhile is fine (``send``).
    """

    from ..delivery import AlreadyFinished

    def action(progress: Callable[[SendProgress], None], stop: threading.Event) -> SendSummary:
        return fn(ctx, issue_id, progress=progress, stop=stop)

    check_issue(ctx, issue_id)
    try:
        summary = run_with_progress(f"{label} #{issue_id}", action)
    except AlreadyFinished:
        if not finished_ok:
            raise click.ClickException(f"issue {issue_id} is already sent") from None
        console.print(f"Issue #{issue_id} was finished by another process meanwhile.")
        return
    show_summary(summary)


def show_summary(summary: SendSummary) -> None:
    """The closing table, then exit non-zero if anything is not done."""

    from rich.table import Table

    from ..models import DeliveryStatus, IssueStatus

    c = summary.counts
    table = Table(title=f"Issue #{summary.issue_id}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    status_style = {"sent": "green", "paused": "red", "sending": "yellow"}.get(
        summary.status.value, "white"
    )
    table.add_row("Subject", summary.subject)
    table.add_row("Status", f"[{status_style}]{summary.status.value}[/{status_style}]")
    table.add_row("Recipients", f"{summary.total:,}")
    table.add_row("Sent", f"{c[DeliveryStatus.SENT]:,}")
    table.add_row("Bounced (unknown address)", f"{c[DeliveryStatus.BOUNCED]:,}")
    table.add_row("Failed", f"{c[DeliveryStatus.FAILED]:,}")
    table.add_row("Skipped (left the list)", f"{c[DeliveryStatus.SKIPPED]:,}")
    table.add_row("Still queued", f"{summary.left_queued:,}")
    table.add_row("Sent this run", f"{summary.run.sent:,} in {summary.run.elapsed:.1f} s")
    table.add_row("Rate", f"{summary.rate:,.0f} msg/s")
    if summary.run.retries:
        table.add_row("Temporary failures retried", f"{summary.run.retries:,}")
    for relay, carried in summary.run.relays.items():
        table.add_row(f"Carried by {relay}", f"{carried:,}")
    console.print(table)
    if summary.status is IssueStatus.PAUSED:
        raise Paused(
            f"issue #{summary.issue_id} is PAUSED: the server said: {summary.reason}\n"
            "This is a sending problem (policy/authentication), not the readers'. Fix it, then "
            f"run: newsletter issues resume {summary.issue_id}",
        )
    if summary.status is IssueStatus.CANCELLED:  # resume refuses it: do not advise that
        raise Unfinished(
            f"issue #{summary.issue_id} was cancelled: {summary.left_queued:,} deliveries "
            f"will not be sent ({c[DeliveryStatus.SENT]:,} had already received it)",
        )
    if summary.left_queued and summary.until_tomorrow:
        raise Unfinished(
            f"{summary.left_queued:,} deliveries stay queued until tomorrow: {summary.run.reason}\n"
            "The timetable's upkeep sends them after midnight (or run 'newsletter send' then)",
        )
    if summary.left_queued:
        when = (
            f" (next retry planned {summary.next_retry:%H:%M:%S} UTC)" if summary.next_retry else ""
        )
        raise Unfinished(
            f"{summary.left_queued:,} deliveries are still queued{when}: {summary.reason}\n"
            f"Run: newsletter issues resume {summary.issue_id}",
        )
    if c[DeliveryStatus.FAILED]:
        raise Unfinished(
            f"{c[DeliveryStatus.FAILED]:,} deliveries failed permanently; see "
            f"'newsletter issues show {summary.issue_id}', retry with "
            f"'newsletter issues retry-failed {summary.issue_id}'",
        )
    console.print(f"[green]Issue #{summary.issue_id} is sent.[/green]")
