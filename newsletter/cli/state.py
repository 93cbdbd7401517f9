"""What every command shares: the lazily opened Context and the settings error.

Kept apart from the group in ``__init__`` so that command modules import it
without importing the group that registers them (no import circle).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from ..config import Settings
    from ..context import Context


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
            # Imported here, not at the top: ``--help`` must not pay for SQLAlchemy.
            from sqlalchemy.exc import SQLAlchemyError

            from ..config import ConfigError
            from ..context import Context
            from ..db import SchemaError

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


def check_signing(settings: Settings) -> None:
    """Load the DKIM keys now: a bad, encrypted or wrong-type key is a one-line error
    (exit 2) before anything is created or sent; a short RSA key is a warning."""
    from ..mail import DkimKeyError, DkimSigner

    try:
        signer = DkimSigner.from_settings(settings)
    except DkimKeyError as exc:
        raise SettingsError(_name_the_key_setting(settings, str(exc))) from None
    for warning in signer.warnings if signer is not None else ():
        click.echo(f"warning: {warning}", err=True)


def require_real_settings(ctx: Context, what: str = "send") -> None:
    """Refuse to mail real people through SMTP while placeholder defaults are in force.

    The outbox (no NEWSLETTER_SMTP_URL) and ``--to`` test copies never get here:
    they are how a first run is tried out.  Exit code 2, naming the setting.
    """
    from ..config import first_run_problems

    if not ctx.settings.smtp_url:
        return
    problems = first_run_problems(ctx.settings)
    if problems:
        raise SettingsError(
            f"not ready to {what} through NEWSLETTER_SMTP_URL: {'; '.join(problems)}"
            " (the Maildir outbox and --to test copies work without them)"
        )


def check_dkim(ctx: Context) -> None:
    """Load the DKIM keys now, so a bad key is one line before anything is created."""
    check_signing(ctx.settings)


def _name_the_key_setting(settings: Settings, message: str) -> str:
    """Start a key error with the setting to fix, as every other settings error does."""
    if message.startswith("NEWSLETTER_"):
        return message
    ed25519 = settings.dkim_ed25519_key_file
    if ed25519 is not None and str(ed25519) in message:
        return f"NEWSLETTER_DKIM_ED25519_KEY_FILE: {message}"
    return f"NEWSLETTER_DKIM_KEY_FILE: {message}"
