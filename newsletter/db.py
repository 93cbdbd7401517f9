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

Every command opens the database, so the schema check on open must be cheap: the
revision in ``alembic_version`` is read with a plain query and compared with the
head found by reading the migration files' ``revision`` / ``down_revision`` lines.
Alembic itself (a quarter of a second to import) loads only when there is
something to migrate.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from .config import Settings
from .models import AppState

if TYPE_CHECKING:
    from alembic.config import Config

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
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def current_revision(engine: Engine) -> str | None:
    """The revision in ``alembic_version`` (None for an empty database), without Alembic."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all()
    if len(rows) > 1:
        raise SchemaError(f"the database has several schema heads: {', '.join(sorted(rows))}")
    return str(rows[0]) if rows else None


_REVISION_LINE = re.compile(r"^(down_revision|revision)\s*(?::[^=]*)?=\s*(.+?)\s*$", re.MULTILINE)
_QUOTED = re.compile(r"[\"']([^\"']+)[\"']")


def head_revision(engine: Engine | None = None) -> str | None:
    """The newest migration's revision, read from the files in ``migrations/versions``.

    The head is the one revision no other migration names as its ``down_revision``
    (a test checks that this agrees with Alembic's own answer).  ``engine`` is
    accepted for compatibility and not used.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
        for key, value in _REVISION_LINE.findall(path.read_text(encoding="utf-8")):
            names = set(_QUOTED.findall(value))
            (revisions if key == "revision" else parents).update(names)
    heads = revisions - parents
    if len(heads) > 1:
        raise SchemaError(f"the migrations have several heads: {', '.join(sorted(heads))}")
    return heads.pop() if heads else None


class SchemaError(RuntimeError):
    """The database's schema revision is one this version of the code does not know."""


def upgrade(engine: Engine) -> bool:
    """Apply pending migrations; return True when anything was applied."""
    current = current_revision(engine)
    if current == head_revision(engine):
        return False
    from alembic import command
    from alembic.util import CommandError

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


class Pinned:
    """One connection held for a loop of many small write transactions (the sender).

    Checking a connection out of the pool for every transaction costs a ping and,
    on PostgreSQL, a few round trips each time; the delivery loop commits several
    times a second, so it keeps one.  On PostgreSQL that connection also stops
    waiting for the WAL flush at commit (``synchronous_commit = off``): the same
    durability SQLite gives every write here (WAL, ``synchronous=NORMAL``), and
    enough for the ledger, where a lost outcome only means a resend (at-least-once).
    """

    def __init__(self, db: Database) -> None:
        self.conn = db.engine.execution_options(sqlite_begin="IMMEDIATE").connect()
        if self.conn.dialect.name == "postgresql":
            self.conn.exec_driver_sql("SET synchronous_commit = off")
            self.conn.commit()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction on the held connection: commit on success, else roll back."""
        with Session(bind=self.conn, expire_on_commit=False) as session, session.begin():
            yield session

    def close(self) -> None:
        self.conn.close()


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
