"""Engine, sessions, SQLite tuning and migrations.

SQLite is the embedded default and must cope with the web app and a sender writing
at once, so every connection gets WAL (readers never block the writer), a busy
timeout (writers wait instead of failing with "database is locked"),
``foreign_keys=ON`` and ``synchronous=NORMAL``.  Write transactions start with
``BEGIN IMMEDIATE`` so two writers queue at the start of a transaction instead of
deadlocking on a lock upgrade half way through; read-only sessions stay deferred so
they never take the write lock.

Domain functions receive a session and never commit; callers use
:meth:`Database.write` / :meth:`Database.read`, which own the transaction.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from .config import Settings
from .models import AppState

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
BUSY_TIMEOUT_MS = 30_000


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Hand transaction control to SQLAlchemy's "begin" hook below.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


def create_db_engine(url: str, **kwargs: Any) -> Engine:
    """An engine with the project's SQLite pragmas (no-op for other databases)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {}).setdefault("check_same_thread", False)
        if database in ("", ":memory:"):
            kwargs.setdefault("poolclass", NullPool)
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision(engine: Engine) -> str | None:
    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


class SchemaError(RuntimeError):
    """The database's schema revision is one this version of the code does not know."""


def upgrade(engine: Engine) -> bool:
    """Apply pending migrations; return True when anything was applied."""
    current = current_revision(engine)
    if current == head_revision(engine):
        return False
    try:
        command.upgrade(alembic_config(engine), "head")
    except CommandError as exc:  # e.g. a database migrated by a newer release
        raise SchemaError(
            f"the database is at schema revision {current!r}, which this version does not "
            f"know (was it upgraded by a newer release?): {exc}"
        ) from None
    return True


@dataclass
class Database:
    """An engine plus the two session factories (deferred reads, immediate writes)."""

    engine: Engine

    def __post_init__(self) -> None:
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(
            self.engine.execution_options(sqlite_begin="IMMEDIATE"), expire_on_commit=False
        )

    @classmethod
    def open(cls, settings: Settings, migrate: bool = True) -> Database:
        """Connect and (by default) bring the schema up to date: "automatic on first use"."""
        db = cls(create_db_engine(settings.database_url))
        if migrate:
            upgrade(db.engine)
        return db

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction: BEGIN IMMEDIATE, commit on success, roll back on error."""
        with self._write() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only unit of work (deferred transaction, never committed).

        Closing the session ends the transaction without expiring loaded objects,
        so callers may still read attributes after the block.
        """
        with self._read() as session:
            yield session

    def session(self) -> Session:
        """A bare write-mode session for loops that commit as they go (delivery)."""
        return self._write()

    def dispose(self) -> None:
        self.engine.dispose()


# Bandit B105 is wrong here: the name of the app_state row that holds the key, not a secret itself.
SECRET_KEY_NAME = "secret_key"  # noqa: S105  # nosec B105


def error_reason(exc: BaseException) -> str:
    """A database error in one line, without the SQL: "database or disk is full"."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc) or type(exc).__name__
    return text.splitlines()[0][:300]


HEARTBEAT_KEY = "healthz.heartbeat"


def heartbeat(session: Session) -> None:
    """Write the one-row heartbeat ``/healthz`` uses to prove the database takes writes."""
    from .models import utcnow

    value = utcnow().isoformat()
    row = session.get(AppState, HEARTBEAT_KEY)
    if row is None:
        session.add(AppState(key=HEARTBEAT_KEY, value=value))
    else:
        row.value = value
    session.flush()


def resolve_secret_key(db: Database, settings: Settings) -> str:
    """The configured key, else the one generated and stored on first use.

    Stored in the database (not a local file) so every process and machine that
    shares the database signs and verifies links with the same key.
    """
    if settings.secret_key:
        return settings.secret_key
    with db.read() as session:
        stored = session.scalar(select(AppState.value).where(AppState.key == SECRET_KEY_NAME))
    if stored:
        return stored
    with db.write() as session:
        row = session.get(AppState, SECRET_KEY_NAME)
        if row is None:
            row = AppState(key=SECRET_KEY_NAME, value=secrets.token_urlsafe(48))
            session.add(row)
        return row.value
