"""``newsletter db upgrade`` and ``newsletter demo``."""

from __future__ import annotations

import click

from ..db import current_revision, upgrade
from . import AppState, pass_state


@click.group("db")
def db_group() -> None:
    """Database schema management."""


@db_group.command("upgrade")
@pass_state
def db_upgrade(state: AppState) -> None:
    """Apply pending migrations (also done automatically on first use)."""
    ctx = state.ctx  # opening already migrates; report where we stand
    applied = upgrade(ctx.db.engine)
    click.echo(
        f"database at revision {current_revision(ctx.db.engine)}"
        + (" (migrated)" if applied else " (up to date)")
    )


COMMANDS: list[click.Command] = [db_group]
