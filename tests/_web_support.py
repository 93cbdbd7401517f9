"""Helpers shared by the web tests: forms, tokens and links out of real emails."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from conftest import Received, SMTPServer
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from newsletter.context import Context
from newsletter.models import Subscriber
from newsletter.web.app import create_app, web_state

BASE = "https://news.example.com"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_from(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "no CSRF field in the page"
    return match.group(1)


def subscribe(
    client: FlaskClient,
    email: str,
    name: str = "",
    ip: str = "203.0.113.7",
    **extra: str,
) -> Any:
    """GET the form (for its CSRF token) and POST it, as a browser would."""
    form = client.get("/subscribe", environ_base={"REMOTE_ADDR": ip})
    data = {"csrf_token": csrf_from(form.get_data(as_text=True)), "email": email, "name": name}
    data.update(extra)
    return client.post("/subscribe", data=data, environ_base={"REMOTE_ADDR": ip})


def text_part(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def html_part(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())


def link(msg: EmailMessage, kind: str, base: str = BASE) -> str:
    """The first ``base/<kind>/<token>`` link in the plain-text part."""
    match = re.search(re.escape(base) + "/" + kind + r"/[A-Za-z0-9_.\-]+", text_part(msg))
    assert match, f"no /{kind}/ link in:\n{text_part(msg)}"
    return match.group(0)


def path_of(url: str, base: str = BASE) -> str:
    assert url.startswith(base + "/"), url
    return url[len(base) :]


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def without_nonces(html: str) -> str:
    """Page text with the per-response CSP nonces blanked, for equality checks."""
    return re.sub(r'nonce="[^"]+"', 'nonce=""', html)


def web_settings(env: dict[str, str], **overrides: str) -> Any:
    """Settings for a web test: conftest's ``env`` plus overrides, no ``.env`` file."""
    from newsletter.config import load_settings

    return load_settings({**env, **overrides}, dotenv_path=None)


@dataclass
class Web:
    """An app on a real SQLite file whose confirmation emails go to a real SMTP server."""

    ctx: Context
    app: Flask
    smtp: SMTPServer

    def client(self) -> FlaskClient:
        """A test client that talks to the app as https://news.example.com."""
        client = self.app.test_client()
        client.environ_base.update({"wsgi.url_scheme": "https", "HTTP_HOST": "news.example.com"})
        return client

    def settle(self) -> None:
        """Wait until every queued confirmation email has been handed to SMTP."""
        web_state(self.app).mailer.join()

    def subscriber(self, email: str) -> Subscriber | None:
        with self.ctx.db.read() as session:
            row = session.scalar(select(Subscriber).where(Subscriber.email == email))
            if row is not None:
                session.expunge(row)  # keep its loaded values after the read ends
            return row

    def mails_to(self, email: str) -> list[Received]:
        self.settle()
        return [m for m in self.smtp.messages if email in m.rcpt_tos]


@pytest.fixture
def make_web(env: dict[str, str], smtp_server: SMTPServer) -> Iterator[Callable[..., Web]]:
    made: list[Web] = []

    def factory(**overrides: str) -> Web:
        settings = web_settings(env, NEWSLETTER_SMTP_URL=smtp_server.url, **overrides)
        ctx = Context.open(settings)
        try:
            app = create_app(ctx)
        except Exception:
            ctx.close()
            raise
        web = Web(ctx, app, smtp_server)
        made.append(web)
        return web

    yield factory
    for web in made:
        web_state(web.app).mailer.close()
        web.ctx.close()


@pytest.fixture
def web(make_web: Callable[..., Web]) -> Web:
    return make_web()


def process_env(tmp_path: Path, smtp_url: str, port: int, **extra: str) -> dict[str, str]:
    """The environment for ``newsletter`` subprocesses: this test's DB, SMTP and URL."""
    import os

    from _databases import folder_database_url

    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    values = {
        "NEWSLETTER_DATABASE_URL": folder_database_url(tmp_path, "served.db"),
        "NEWSLETTER_SMTP_URL": smtp_url,
        "NEWSLETTER_BASE_URL": f"http://127.0.0.1:{port}",
        "NEWSLETTER_SECRET_KEY": "served-secret-key-0123456789",
        "NEWSLETTER_POSTAL_ADDRESS": "1 Fleet Street, London EC4Y 1AA",
        "NEWSLETTER_SITE_NAME": "The Daily Digest",
        "NEWSLETTER_FROM": "The Daily Digest <news@example.com>",
        **extra,
    }
    env.update(values)
    return env


@dataclass
class Served:
    """``newsletter serve`` running as a real process (waitress)."""

    base: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> int:
        """SIGTERM, as systemd or docker would; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_serve(tmp_path: Path, smtp_url: str, *args: str, **extra_env: str) -> Served:
    """Start ``python -m newsletter serve`` on a free port and wait for /healthz."""
    import sys
    import urllib.request

    from conftest import free_port

    port = free_port()
    env = process_env(tmp_path, smtp_url, port, **extra_env)
    log = tmp_path / f"serve-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "newsletter", "serve", "--port", str(port), *args],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    served = Served(f"http://127.0.0.1:{port}", env, proc, log)
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(served.base + "/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return served
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            served.stop()
            raise AssertionError(f"newsletter serve did not start:\n{served.output}")
        time.sleep(0.1)
