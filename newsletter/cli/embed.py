"""``newsletter embed``: print the signup form for the site's own pages.

Needs only the settings (no database), so it answers at once and works before
anything else is set up.
"""

from __future__ import annotations

import click

from ..config import ConfigError, load_settings
from .state import SettingsError


@click.command("embed")
def embed_command() -> None:
    """Print the HTML signup form to paste into the site's pages (footer, articles).

    The form posts to NEWSLETTER_BASE_URL/subscribe; the page it is on must be on
    an origin listed in NEWSLETTER_ALLOWED_ORIGINS, or the post is refused (403).
    """
    from ..web.embed import embed_snippet

    try:
        settings = load_settings()
    except ConfigError as exc:
        raise SettingsError(str(exc)) from None
    click.echo(embed_snippet(settings), nl=False)
    if not settings.allowed_origins:
        click.echo(
            "warning: NEWSLETTER_ALLOWED_ORIGINS is empty: this form will be refused (403) "
            "on any page that is not served by this app",
            err=True,
        )


COMMANDS: list[click.Command] = [embed_command]
