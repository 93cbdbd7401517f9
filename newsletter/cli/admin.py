"""``newsletter db upgrade | copy --to URL`` and ``newsletter demo``."""

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


@db_group.command("copy")
@click.option("--to", "target_url", required=True, metavar="URL", help="The empty target database.")
@pass_state
def db_copy(state: AppState, target_url: str) -> None:
    """Copy every table to another database (e.g. SQLite to PostgreSQL), then verify.

    Stop the web app, the timetable and any sender first; afterwards point
    NEWSLETTER_DATABASE_URL at the target.
    """
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from ..db import create_db_engine
    from ..dbcopy import CopyError, copy_database

    try:
        target = create_db_engine(target_url)
    except (ArgumentError, ValueError) as exc:
        raise click.BadParameter(f"not a database URL: {exc}", param_hint="--to") from None
    try:
        copied = copy_database(state.ctx.db.engine, target)
    except CopyError as exc:
        raise click.ClickException(str(exc)) from None
    except SQLAlchemyError as exc:
        raise click.ClickException(f"cannot copy: {str(exc).splitlines()[0]}") from None
    finally:
        target.dispose()
    for item in copied:
        click.echo(f"{item.table:<16} {item.rows:>10,} rows")
    total = sum(item.rows for item in copied)
    click.echo(f"copied {total:,} rows; counts verified. Now set NEWSLETTER_DATABASE_URL to it.")


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
