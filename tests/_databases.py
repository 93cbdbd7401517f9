"""Test databases on either backend: a SQLite file, or a fresh PostgreSQL database.

``NEWSLETTER_TEST_DATABASE_URL`` (e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``)
names a server to test on.  Each test then gets its own database there, copied
with ``CREATE DATABASE … TEMPLATE`` from one that the Alembic migrations built once
per session (so the suite does not run the migrations 600 times), and dropped
after the test.  Unset: a SQLite file in the test's folder, as before.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL, make_url

TEST_URL_ENV = "NEWSLETTER_TEST_DATABASE_URL"

_names = itertools.count(1)
_admin: Engine | None = None
_template: str | None = None
_created: list[str] = []


def server_url() -> URL | None:
    """The PostgreSQL server the suite runs on, or None for SQLite."""
    raw = os.environ.get(TEST_URL_ENV, "").strip()
    if not raw:
        return None
    url = make_url(raw)
    if url.get_backend_name() == "sqlite":
        return None
    return url


def on_postgres() -> bool:
    return server_url() is not None


def _admin_engine() -> Engine:
    global _admin
    if _admin is None:
        url = server_url()
        assert url is not None
        _admin = create_engine(url, isolation_level="AUTOCOMMIT", pool_size=1)
    return _admin


def _create(name: str, template: str) -> None:
    with _admin_engine().connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    _created.append(name)


def _url_for(name: str) -> str:
    url = server_url()
    assert url is not None
    return url.set(database=name).render_as_string(hide_password=False)


def _migrated_template() -> str:
    """A database the migrations built, once per session, to copy for each test."""
    global _template
    if _template is None:
        from newsletter.db import create_db_engine, upgrade

        name = f"nl_template_{os.getpid()}"
        _create(name, "template0")
        engine = create_db_engine(_url_for(name))
        try:
            upgrade(engine)
        finally:
            engine.dispose()
        _template = name
    return _template


def new_database_url(folder: Path, filename: str = "subscribers.db", migrated: bool = True) -> str:
    """A database of its own: ``folder/filename`` on SQLite, a fresh one on PostgreSQL.

    ``migrated=False`` gives an empty PostgreSQL database (for migration tests); a new
    SQLite file is always empty until opened.
    """
    if not on_postgres():
        return f"sqlite:///{folder / filename}"
    name = f"nl_test_{os.getpid()}_{next(_names)}"
    _create(name, _migrated_template() if migrated else "template0")
    return _url_for(name)


_by_folder: dict[tuple[Path, str], str] = {}


def folder_database_url(folder: Path, filename: str = "subscribers.db") -> str:
    """Like :func:`new_database_url`, but the same database each time for one folder.

    For helpers that, on SQLite, open ``folder/filename`` again and again (module-scoped
    contexts, several processes of one test); dropped at the end of the session.
    """
    key = (folder, filename)
    if key not in _by_folder:
        _by_folder[key] = new_database_url(folder, filename)
    return _by_folder[key]


def drop_database(url: str) -> None:
    """Drop a database made by :func:`new_database_url` (no-op on SQLite)."""
    parsed = make_url(url)
    name = parsed.database
    if parsed.get_backend_name() == "sqlite" or name not in _created:
        return
    with _admin_engine().connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    _created.remove(name)


def drop_all() -> None:
    """End of session: every database still around, the template last."""
    global _template, _admin
    if _admin is None:
        return
    for name in [n for n in _created if n != _template]:
        drop_database(_url_for(name))
    if _template is not None:
        drop_database(_url_for(_template))
        _template = None
    _admin.dispose()
    _admin = None


def query(url: str, sql: str, **params: object) -> list[tuple[object, ...]]:
    """Rows of one SQL statement against a test database (committed), on either backend.

    For tests that look at the database a separate process wrote, as an operator would.
    """
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(sql), params)
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()
