"""Helpers for the admin tests: an editor account and a logged-in test client."""

from __future__ import annotations

import re
from typing import Any

from _web_support import Web, csrf_from
from flask.testing import FlaskClient

from newsletter.web.admin.accounts import add_user

EDITOR = "editor@news.example.com"
PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def make_editor(web: Web, email: str = EDITOR, password: str = PASSWORD) -> None:
    with web.ctx.db.write() as session:
        add_user(session, email, password)


def login(
    client: FlaskClient, email: str = EDITOR, password: str = PASSWORD, ip: str = "198.51.100.9"
) -> Any:
    form = client.get("/admin/login", environ_base={"REMOTE_ADDR": ip})
    token = csrf_from(form.get_data(as_text=True))
    return client.post(
        "/admin/login",
        data={"csrf_token": token, "email": email, "password": password},
        environ_base={"REMOTE_ADDR": ip},
    )


def logged_in(web: Web) -> FlaskClient:
    client = web.client()
    response = login(client)
    assert response.status_code == 303, response.get_data(as_text=True)
    return client


def csrf_of(client: FlaskClient) -> str:
    """The session's CSRF token, read from a page as a browser would."""
    return csrf_from(client.get("/admin/").get_data(as_text=True))
