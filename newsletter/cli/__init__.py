"""The ``newsletter`` command: one click group, one module per area.

Settings and the database are opened lazily (``AppState.ctx``) so that ``--help``
works with no configuration, and a bad setting becomes ``Error: NEWSLETTER_X: ...``
with exit code 2 instead of a traceback.  Commands own their transactions.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from .state import AppState as AppState
from .state import SettingsError as SettingsError
from .state import pass_state as pass_state


class _Group(click.Group):
    """The top-level group: a database error in any command is one line and exit 1.

    A full disk, a read-only file or a lost server surfaces as an SQLAlchemy error
    from whatever write the command was doing; the transaction was rolled back,
    so nothing half-made was kept.  The traceback is logged at DEBUG (``-vv``).
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            # Not imported up front: ``--help`` must not load SQLAlchemy.  A command
            # that met a database error has loaded it already.
            errors = sys.modules.get("sqlalchemy.exc")
            if errors is None or not isinstance(exc, errors.SQLAlchemyError):
                raise
            from ..db import error_reason

            logging.getLogger("newsletter").debug("database error", exc_info=True)
            raise click.ClickException(f"database error: {error_reason(exc)}") from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log what happens (INFO; twice for DEBUG).")
@click.version_option(package_name="newsletter")
@click.pass_context
def main(click_ctx: click.Context, verbose: bool) -> None:
    """Self-hosted featured-stories email digest.

    Settings come from NEWSLETTER_* environment variables or a .env file
    (see .env.example). With no SMTP URL, mail goes to the Maildir outbox/.
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    state = click_ctx.ensure_object(AppState)
    click_ctx.call_on_close(state.close)
    from ..config import unknown_settings

    try:
        warnings = unknown_settings()
    except OSError:  # an unreadable .env is reported when the settings are loaded
        warnings = []
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)


def _register() -> None:
    from . import (
        admin,
        bounces,
        dkim,
        embed,
        preview,
        sending,
        server,
        stories,
        subscribers,
        timetable,
        users,
        worker,
    )

    for module in (
        stories,
        subscribers,
        preview,
        sending,
        worker,
        server,
        timetable,
        admin,
        dkim,
        bounces,
        embed,
        users,
    ):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
