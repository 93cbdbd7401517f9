"""The ``newsletter`` command: one click group, one module per area.

Settings and the database are opened lazily (``AppState.ctx``) so that ``--help``
works with no configuration, and a bad setting becomes ``Error: NEWSLETTER_X: ...``
with exit code 2 instead of a traceback.  Commands own their transactions.
"""

from __future__ import annotations

import logging

import click
from sqlalchemy.exc import SQLAlchemyError

from ..config import ConfigError
from ..context import Context
from ..db import SchemaError


class SettingsError(click.ClickException):
    """A bad NEWSLETTER_* setting: printed as one line, exit code 2."""

    exit_code = 2


class AppState:
    """Click's ``obj``: opens the Context on first use, closes it at exit."""

    def __init__(self) -> None:
        self._ctx: Context | None = None

    @property
    def ctx(self) -> Context:
        if self._ctx is None:
            try:
                self._ctx = Context.open()
            except ConfigError as exc:
                raise SettingsError(str(exc)) from None
            except (SQLAlchemyError, OSError, ImportError, SchemaError) as exc:
                first = (str(exc).splitlines() or [type(exc).__name__])[0]
                raise SettingsError(
                    f"NEWSLETTER_DATABASE_URL: cannot open the database: {first}"
                ) from None
        return self._ctx

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None


pass_state = click.make_pass_decorator(AppState, ensure=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


def _register() -> None:
    from . import admin, preview, sending, server, stories, subscribers, timetable, worker

    for module in (stories, subscribers, preview, sending, worker, server, timetable, admin):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
