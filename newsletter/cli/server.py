"""``newsletter serve``: the public web app on waitress (never Flask's dev server)."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import Any, TypeVar

import click

from .state import AppState, check_signing, pass_state

F = TypeVar("F", bound=Callable[..., Any])


def web_options(command: F) -> F:
    """--host/--port/--threads/--trusted-proxy, shared by ``serve`` and ``run``."""
    for option in reversed(
        (
            click.option(
                "--host", default="127.0.0.1", show_default=True, help="Interface to listen on."
            ),
            click.option(
                "--port",
                default=8000,
                show_default=True,
                type=click.IntRange(1, 65535),
                help="TCP port to listen on.",
            ),
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

    check_listen(host, port)
    check_signing(state.ctx.settings)  # it sends (signed) confirmation emails
    app = create_app(state.ctx)  # a bad NEWSLETTER_WEB_RATE_* fails in load_settings
    click.echo(f"Serving {state.ctx.settings.site_name} on http://{host}:{port}/ (Ctrl+C to stop)")
    try:
        serve(app, host=host, port=port, threads=threads, trusted_proxy=trusted_proxy)
    except OSError as exc:  # the port is taken, the address is not ours, no permission
        raise click.ClickException(listen_error(host, port, exc)) from None


def check_listen(host: str, port: int) -> None:
    """Bind and release ``host:port`` first: a busy port is one line, before any output."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from None
    family, kind, proto, _, address = infos[0]
    probe = socket.socket(family, kind, proto)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as waitress does
        probe.bind(address)
    except OSError as exc:
        raise click.ClickException(listen_error(host, port, exc)) from None
    finally:
        probe.close()


def listen_error(host: str, port: int, exc: OSError) -> str:
    """One line for a socket that cannot be opened, with what to do about it."""
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {host}:{port}: the port is already in use "
            "(another server is running there; stop it or choose another --port)"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"cannot listen on {host}:{port}: permission denied (use a port above 1023)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host}:{port}: this machine has no such address (check --host)"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


COMMANDS: list[click.Command] = [serve_command]
