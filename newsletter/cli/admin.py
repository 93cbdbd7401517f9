"""``newsletter db upgrade`` and ``newsletter demo``."""

from __future__ import annotations

from pathlib import Path

import click

from .state import AppState, SettingsError, pass_state


@click.group("db")
def db_group() -> None:
    """Database schema management."""


@db_group.command("upgrade")
@pass_state
def db_upgrade(state: AppState) -> None:
    """Apply pending migrations (also done automatically on first use)."""

    from ..db import current_revision, upgrade

    ctx = state.ctx  # opening already migrates; report where we stand
    applied = upgrade(ctx.db.engine)
    click.echo(
        f"database at revision {current_revision(ctx.db.engine)}"
        + (" (migrated)" if applied else " (up to date)")
    )


@click.command("demo")
@click.option(
    "--preview",
    "preview",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("preview.html"),
    show_default=True,
    help="Where to write the HTML of the first message.",
)
def demo_command(preview: Path) -> None:
    """The quickstart: sample stories and readers, today's digest into outbox/.

    Uses your settings (database, outbox, From...) but never NEWSLETTER_SMTP_URL:
    the demo writes standard message files and mails nobody.
    """

    from ..config import ConfigError, load_settings
    from ..demo import run_demo

    try:
        settings = load_settings()
    except ConfigError as exc:
        raise SettingsError(str(exc)) from None
    result = run_demo(settings, preview)
    click.echo(f"Database:   {result.database}")
    click.echo(f"Stories:    {result.stories_added} sample stories added (featured)")
    click.echo(f"Readers:    {result.readers_added} example subscribers added (active)")
    if result.note:
        click.echo(f"Note:       {result.note}")
    if result.summary is not None:
        s = result.summary
        click.echo(f"Sent:       issue #{s.issue_id} “{s.subject}”")
        click.echo(f"            {s.run.sent} messages in {s.run.elapsed:.2f} s ({s.status.value})")
    outbox = result.outbox.resolve()
    click.echo(
        f"Messages:   {result.messages} files in {outbox / 'new'}  (open them in any mail client)"
    )
    if result.preview is not None:
        click.echo(f"Preview:    {result.preview.resolve()}  (open it in a browser)")
    click.echo("Next:       newsletter issues list · newsletter --help")
    if result.summary is not None and not result.summary.ok:
        raise click.ClickException(f"the demo send did not finish: {result.summary.reason}")


COMMANDS: list[click.Command] = [db_group, demo_command]
