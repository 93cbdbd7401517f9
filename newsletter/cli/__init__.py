"""The ``newsletter`` command: one click group, one module per area.

Settings and the database are opened lazily (``AppState.ctx``) so that ``--help``
works with no configuration, and a bad setting becomes ``Error: NEWSLETTER_X: ...``
with exit code 2 instead of a traceback.  Commands own their transactions.
"""

from __future__ import annotations

import logging

import click
from sqlalchemy.exc import SQLAlchemyError

from ..config import ConfigError, first_run_problems, unknown_settings
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


def require_real_settings(ctx: Context, what: str = "send") -> None:
    """Refuse to mail real people through SMTP while placeholder defaults are in force.

    The outbox (no NEWSLETTER_SMTP_URL) and ``--to`` test copies never get here:
    they are how a first run is tried out.  Exit code 2, naming the setting.
    """
    if not ctx.settings.smtp_url:
        return
    problems = first_run_problems(ctx.settings)
    if problems:
        raise SettingsError(
            f"not ready to {what} through NEWSLETTER_SMTP_URL: {'; '.join(problems)}"
            " (the Maildir outbox and --to test copies work without them)"
        )


def check_dkim(ctx: Context) -> None:
    """Load the DKIM key now, so a bad key is one line before anything is created."""
    from ..dkimsign import DkimKeyError, DkimSigner

    try:
        DkimSigner.from_settings(ctx.settings)
    except DkimKeyError as exc:
        raise SettingsError(f"NEWSLETTER_DKIM_KEY_FILE: {exc}") from None


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
    try:
        warnings = unknown_settings()
    except OSError:  # an unreadable .env is reported when the settings are loaded
        warnings = []
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)


def _register() -> None:
    from . import admin, preview, sending, server, stories, subscribers, timetable

    for module in (stories, subscribers, preview, sending, server, timetable, admin):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
