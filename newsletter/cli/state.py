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
        raise SettingsError(str(exc)) from None
    for warning in signer.warnings if signer is not None else ():
        click.echo(f"warning: {warning}", err=True)
