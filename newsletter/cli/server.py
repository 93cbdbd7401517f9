"""``newsletter serve``: the public web app on waitress (never Flask's dev server)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from . import AppState, check_signing, pass_state

F = TypeVar("F", bound=Callable[..., Any])


def web_options(command: F) -> F:
    """--host/--port/--threads/--trusted-proxy, shared by ``serve`` and ``run``."""
    for option in reversed(
        (
            click.option(
                "--host", default="127.0.0.1", show_default=True, help="Interface to listen on."
            ),
            click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535)),
            click.option(
                "--threads",
                default=8,
                show_default=True,
                type=click.IntRange(1, 256),
                help="Web worker threads (requests served at once).",
            ),
            click.option(
                "--trusted-proxy",
                default=None,
                metavar="IP",
                help="Address of a reverse proxy whose X-Forwarded-For is believed "
                "(else it is ignored).",
            ),
        )
    ):
        command = option(command)
    return command


@click.command("serve")
@web_options
@pass_state
def serve_command(
    state: AppState, host: str, port: int, threads: int, trusted_proxy: str | None
) -> None:
    """Serve subscribe/confirm/unsubscribe/archive pages (production WSGI server)."""
    from ..web import create_app, serve

    check_signing(state.ctx.settings)  # it sends (signed) confirmation emails
    app = create_app(state.ctx)  # a bad NEWSLETTER_WEB_RATE_* fails in load_settings
    click.echo(f"Serving {state.ctx.settings.site_name} on http://{host}:{port}/ (Ctrl+C to stop)")
    serve(app, host=host, port=port, threads=threads, trusted_proxy=trusted_proxy)


COMMANDS: list[click.Command] = [serve_command]
