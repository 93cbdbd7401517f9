"""``newsletter users add EMAIL [--password-stdin] | list | remove EMAIL | passwd EMAIL``.

The editors who may log in to the admin app.  Passwords are typed twice at a
prompt (never on the command line, where ``ps`` and shell history would keep
them), or read from standard input for scripts; only their argon2 hashes are stored.
"""

from __future__ import annotations

import sys

import click

from .state import AppState, pass_state


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        if password.endswith("\r"):
            password = password[:-1]
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    from ..web.admin.accounts import AccountError, check_password

    try:
        return check_password(password)
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None


_STDIN = click.option(
    "--password-stdin", is_flag=True, help="Read the password from the first line of stdin."
)


@click.group("users")
def users_group() -> None:
    """Editors of the admin app (/admin/): add, list, remove, change a password."""


@users_group.command("add")
@click.argument("email")
@_STDIN
@pass_state
def add_user(state: AppState, email: str, password_stdin: bool) -> None:
    """Add an editor (the password is asked twice, at least 12 characters)."""
    from ..web.admin.accounts import AccountError, add_user, find_user

    ctx = state.ctx
    with ctx.db.read() as session:
        if find_user(session, email) is not None:
            raise click.ClickException(f"there is already an editor {email.strip().lower()}")
    password = _read_password(password_stdin)
    with ctx.db.write() as session:
        try:
            user = add_user(session, email, password)
        except AccountError as exc:
            raise click.ClickException(str(exc)) from None
        address = user.email
    click.echo(f"Editor {address} added; log in at {ctx.settings.base_url}/admin/login")


@users_group.command("list")
@pass_state
def list_users(state: AppState) -> None:
    """Every editor, with when they last logged in."""
    from ..web.admin.accounts import list_users

    with state.ctx.db.read() as session:
        users = list_users(session)
        if not users:
            click.echo("No editors yet: newsletter users add EMAIL")
            return
        for user in users:
            last = f"{user.last_login_at:%Y-%m-%d %H:%M} UTC" if user.last_login_at else "never"
            click.echo(f"{user.email}  added {user.created_at:%Y-%m-%d}  last login {last}")


@users_group.command("remove")
@click.argument("email")
@pass_state
def remove_user(state: AppState, email: str) -> None:
    """Remove an editor (their open sessions end at their next request)."""
    from ..web.admin.accounts import AccountError, remove_user

    with state.ctx.db.write() as session:
        try:
            user = remove_user(session, email)
        except AccountError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"Editor {user.email} removed.")


@users_group.command("passwd")
@click.argument("email")
@_STDIN
@pass_state
def passwd(state: AppState, email: str, password_stdin: bool) -> None:
    """Set a new password (other sessions of that editor are logged out)."""
    from ..web.admin.accounts import AccountError, find_user, set_password

    ctx = state.ctx
    with ctx.db.read() as session:
        if find_user(session, email) is None:
            raise click.ClickException(f"there is no editor {email.strip().lower()}")
    password = _read_password(password_stdin)
    with ctx.db.write() as session:
        try:
            user = set_password(session, email, password)
        except AccountError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"Password of {user.email} changed.")


COMMANDS: list[click.Command] = [users_group]
