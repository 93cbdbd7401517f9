"""Database plumbing (db.py), leases (lease.py) and link tokens (tokens.py).

Real SQLite files in tmp_path: the migration from an empty file, the pragmas every
connection gets, BEGIN IMMEDIATE for writes (checked by actually taking the lock
from a second connection), the stored secret key, lease take-over after expiry,
and token round trips, tampering and expiry.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import time_machine
from _databases import on_postgres
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError

from newsletter import lease
from newsletter.cli import main
from newsletter.config import Settings
from newsletter.context import Context
from newsletter.db import (
    BUSY_TIMEOUT_MS,
    Database,
    create_db_engine,
    current_revision,
    head_revision,
    resolve_secret_key,
    upgrade,
)
from newsletter.models import AppState, Base, Delivery, Subscriber, SubscriberStatus
from newsletter.subscribers.tokens import CONFIRM_MAX_AGE, ExpiredToken, InvalidToken, Tokens

TABLES = {
    "stories",
    "subscribers",
    "issues",
    "issue_stories",
    "deliveries",
    "leases",
    "feed_states",
    "app_state",
}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "subscribers.db"


@pytest.fixture
def db(make_settings: Callable[..., Settings], database_url: str) -> Iterator[Database]:
    database = Database.open(make_settings(NEWSLETTER_DATABASE_URL=database_url))
    yield database
    database.dispose()


# --- migrations ---------------------------------------------------------------------


def test_migration_from_an_empty_database(
    make_settings: Callable[..., Settings], tmp_path: Path, new_database: Callable[..., str]
) -> None:
    path = tmp_path / "nested" / "dir" / "new.db"  # parent folders are created (SQLite)
    url = new_database("nested/dir/new.db", migrated=False)
    settings = make_settings(NEWSLETTER_DATABASE_URL=url)
    bare = Database.open(settings, migrate=False)
    try:
        assert current_revision(bare.engine) is None
        assert set(inspect(bare.engine).get_table_names()) == set()
        assert upgrade(bare.engine) is True
        assert current_revision(bare.engine) == head_revision(bare.engine) is not None
        assert set(inspect(bare.engine).get_table_names()) >= TABLES
        assert upgrade(bare.engine) is False  # idempotent
    finally:
        bare.dispose()
    assert path.is_file() or on_postgres()


def test_migrations_match_the_models(db: Database) -> None:
    """The migration creates exactly what models.py declares (no drift)."""
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_opening_migrates_automatically_and_cli_db_upgrade(cli_env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("database at revision ")
    engine = create_db_engine(cli_env["NEWSLETTER_DATABASE_URL"])
    try:
        names = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert TABLES | {"alembic_version"} <= names


# --- SQLite connection settings ---------------------------------------------------------


@pytest.mark.sqlite_only
def test_every_connection_gets_the_pragmas(db: Database) -> None:
    for _ in range(2):  # a fresh pooled connection and a reused one
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == BUSY_TIMEOUT_MS
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def test_foreign_keys_are_enforced(db: Database) -> None:
    with pytest.raises(IntegrityError), db.write() as session:
        session.add(Delivery(issue_id=12345, subscriber_id=67890))


def _other_writer_is_blocked(path: Path) -> bool:
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc)
        return True
    else:
        other.execute("ROLLBACK")
        return False
    finally:
        other.close()


@pytest.mark.sqlite_only
def test_write_sessions_begin_immediate_and_reads_stay_deferred(
    db: Database, db_path: Path
) -> None:
    with db.write() as session:
        session.execute(text("SELECT 1"))  # only a read, yet the write lock is already ours
        assert _other_writer_is_blocked(db_path)
    assert not _other_writer_is_blocked(db_path)
    with db.read() as session:
        session.execute(select(Subscriber)).all()
        assert not _other_writer_is_blocked(db_path)
    bare = db.session()
    try:
        bare.execute(text("SELECT 1"))
        assert _other_writer_is_blocked(db_path)  # the delivery loop's session writes too
        bare.commit()
    finally:
        bare.close()


def test_write_commits_and_rolls_back_on_error(db: Database) -> None:
    with db.write() as session:
        session.add(Subscriber(email="kept@example.com"))
    with pytest.raises(RuntimeError), db.write() as session:
        session.add(Subscriber(email="lost@example.com"))
        session.flush()
        raise RuntimeError("boom")
    with db.read() as session:
        assert session.scalars(select(Subscriber.email)).all() == ["kept@example.com"]


@pytest.mark.sqlite_only
def test_a_second_writer_waits_instead_of_failing(db: Database) -> None:
    holding = threading.Event()
    release = threading.Event()

    def hold_the_lock() -> None:
        with db.write() as session:
            session.add(Subscriber(email="first@example.com"))
            session.flush()
            holding.set()
            release.wait(5)

    thread = threading.Thread(target=hold_the_lock)
    thread.start()
    assert holding.wait(5)
    threading.Timer(0.3, release.set).start()
    started = time.monotonic()
    with db.write() as session:  # blocks on the busy timeout, then succeeds
        session.add(Subscriber(email="second@example.com"))
    waited = time.monotonic() - started
    thread.join(5)
    assert waited >= 0.2
    with db.read() as session:
        assert len(session.scalars(select(Subscriber)).all()) == 2


def test_datetimes_are_stored_utc_and_naive_ones_refused(db: Database) -> None:
    madrid = datetime(2026, 6, 1, 9, 0, tzinfo=__import__("zoneinfo").ZoneInfo("Europe/Madrid"))
    with db.write() as session:
        session.add(Subscriber(email="tz@example.com", created_at=madrid))
    with db.read() as session:
        created = session.scalar(select(Subscriber.created_at))
    assert created == datetime(2026, 6, 1, 7, 0, tzinfo=UTC) and created.tzinfo is UTC
    with pytest.raises(Exception, match="naive datetime"), db.write() as session:
        session.add(Subscriber(email="naive@example.com", created_at=datetime(2026, 1, 1)))
        session.flush()


def test_status_columns_refuse_unknown_values(db: Database) -> None:
    with pytest.raises(IntegrityError), db.write() as session:
        session.execute(
            text(
                "INSERT INTO subscribers (email, name, status, created_at, bounce_count, source)"
                " VALUES ('x@example.com', '', 'vip', '2026-01-01 00:00:00', 0, 'cli')"
            )
        )
    with db.write() as session:
        session.add(Subscriber(email="ok@example.com", status=SubscriberStatus.ACTIVE))


# --- the secret key ---------------------------------------------------------------------


def test_secret_key_generated_once_and_shared_through_the_database(
    make_settings: Callable[..., Settings], database_url: str
) -> None:
    settings = make_settings(NEWSLETTER_DATABASE_URL=database_url, NEWSLETTER_SECRET_KEY="")
    assert settings.secret_key is None
    first = Context.open(settings)
    second = Context.open(settings)  # another process on the same database
    try:
        key = first.secret_key
        assert len(key) >= 32
        assert second.secret_key == key
        assert resolve_secret_key(first.db, settings) == key
        with first.db.read() as session:
            assert len(session.scalars(select(AppState)).all()) == 1
        # A link signed by one process verifies in the other.
        assert second.tokens.read_unsubscribe(first.tokens.unsubscribe(42)) == 42
    finally:
        first.close()
        second.close()


def test_configured_secret_key_wins_and_is_not_stored(db: Database, settings: Settings) -> None:
    assert resolve_secret_key(db, settings) == "test-secret-key-0123456789"
    with db.read() as session:
        assert session.scalars(select(AppState)).all() == []


# --- leases -----------------------------------------------------------------------------

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
TTL = timedelta(seconds=60)


def _holder(n: int) -> lease.Holder:
    return lease.Holder(token=f"holder-{n}", host=f"host{n}", pid=1000 + n)


def test_lease_acquire_renew_and_held(db: Database) -> None:
    a, b = _holder(1), _holder(2)
    with db.write() as session:
        lease.acquire(session, "issue:1", a, TTL, now=T0)
    with db.write() as session:
        lease.acquire(session, "issue:1", a, TTL, now=T0 + timedelta(seconds=30))  # renew
    with pytest.raises(lease.LeaseHeld) as info, db.write() as session:
        lease.acquire(session, "issue:1", b, TTL, now=T0 + timedelta(seconds=60))
    assert (info.value.host, info.value.pid) == ("host1", 1001)
    assert "held by pid 1001 on host1 until 2026-01-01 12:01:30" in str(info.value)
    with db.write() as session:  # other names are independent
        lease.acquire(session, "scheduler", b, TTL, now=T0)
    with db.read() as session:
        current = lease.current(session, "issue:1", now=T0 + timedelta(seconds=60))
        assert current is not None and current.holder == "holder-1"


def test_expired_lease_is_taken_over(db: Database) -> None:
    crashed, next_one = _holder(1), _holder(2)
    with db.write() as session:
        lease.acquire(session, "issue:7", crashed, TTL, now=T0)
    later = T0 + TTL + timedelta(seconds=1)
    with db.read() as session:
        assert lease.current(session, "issue:7", now=later) is None
    with db.write() as session:
        lease.acquire(session, "issue:7", next_one, TTL, now=later)
    with pytest.raises(lease.LeaseHeld), db.write() as session:  # the old holder lost it
        lease.acquire(session, "issue:7", crashed, TTL, now=later)


def test_release_only_by_the_holder(db: Database) -> None:
    a, b = _holder(1), _holder(2)
    with db.write() as session:
        lease.acquire(session, "scheduler", a, TTL, now=T0)
        lease.release(session, "scheduler", b)  # not b's to give up
    with db.read() as session:
        assert lease.current(session, "scheduler", now=T0) is not None
    with db.write() as session:
        lease.release(session, "scheduler", a)
    with db.write() as session:
        lease.acquire(session, "scheduler", b, TTL, now=T0)


def test_only_one_of_many_racing_processes_gets_the_lease(db: Database) -> None:
    winners: list[int] = []
    barrier = threading.Barrier(6)

    def contend(n: int) -> None:
        barrier.wait(5)
        try:
            with db.write() as session:
                lease.acquire(session, "issue:race", _holder(n), TTL)
            winners.append(n)
        except lease.LeaseHeld:
            pass

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(winners) == 1


def test_holder_this_process_is_unique() -> None:
    one, two = lease.Holder.this_process(), lease.Holder.this_process()
    assert one.token != two.token and one.pid == two.pid


# --- tokens -----------------------------------------------------------------------------


def test_token_round_trips_and_purposes_do_not_mix() -> None:
    tokens = Tokens("k" * 32)
    unsub, conf = tokens.unsubscribe(17), tokens.confirm(17)
    assert tokens.read_unsubscribe(unsub) == 17
    assert tokens.read_confirm(conf) == 17
    assert "@" not in unsub  # carries an id, never the address
    with pytest.raises(InvalidToken):
        tokens.read_confirm(unsub)
    with pytest.raises(InvalidToken):
        tokens.read_unsubscribe(conf)


@pytest.mark.parametrize(
    "mangle",
    [
        # not the last character: its low bits are base64 padding and may not count
        lambda t: t[:-5] + ("A" if t[-5] != "A" else "B") + t[-4:],
        lambda t: "x" + t,
        lambda t: "",
        lambda t: "garbage.token",
    ],
)
def test_tampered_tokens_are_invalid(mangle: Callable[[str], str]) -> None:
    tokens = Tokens("k" * 32)
    with pytest.raises(InvalidToken):
        tokens.read_unsubscribe(mangle(tokens.unsubscribe(5)))
    with pytest.raises(InvalidToken):
        tokens.read_confirm(mangle(tokens.confirm(5)))


def test_another_key_does_not_verify() -> None:
    with pytest.raises(InvalidToken):
        Tokens("b" * 32).read_unsubscribe(Tokens("a" * 32).unsubscribe(1))


def test_payload_must_be_a_subscriber_id() -> None:
    from itsdangerous import URLSafeSerializer

    forged = URLSafeSerializer("k" * 32, salt="newsletter.unsubscribe.v1")
    tokens = Tokens("k" * 32)
    for payload in ("alice@example.com", -3, 0, True, [1]):
        with pytest.raises(InvalidToken):
            tokens.read_unsubscribe(str(forged.dumps(payload)))


def test_confirm_tokens_expire_and_say_whose_they_were() -> None:
    tokens = Tokens("k" * 32)
    with time_machine.travel(T0, tick=False):
        token = tokens.confirm(23)
    with time_machine.travel(T0 + CONFIRM_MAX_AGE - timedelta(minutes=1), tick=False):
        assert tokens.read_confirm(token) == 23
    late = T0 + CONFIRM_MAX_AGE + timedelta(minutes=1)
    with time_machine.travel(late, tick=False), pytest.raises(ExpiredToken) as info:
        tokens.read_confirm(token)
    assert info.value.subscriber_id == 23
    assert isinstance(info.value, InvalidToken)


def test_unsubscribe_tokens_never_expire() -> None:
    tokens = Tokens("k" * 32)
    with time_machine.travel(T0, tick=False):
        token = tokens.unsubscribe(99)
    with time_machine.travel(T0 + timedelta(days=3650), tick=False):
        assert tokens.read_unsubscribe(token) == 99


def test_subscriber_ids_are_never_reused_after_an_erase(ctx: Context) -> None:
    """Unsubscribe tokens carry the id and never expire: a new reader must get a new id."""
    from newsletter.subscribers.store import add_subscriber, remove

    with ctx.db.write() as session:
        first = add_subscriber(session, "first@example.com", confirmed=True)
        session.flush()
        old_id = first.id
    token = ctx.tokens.unsubscribe(old_id)
    with ctx.db.write() as session:
        remove(session, "first@example.com", erase=True)
    with ctx.db.write() as session:
        second = add_subscriber(session, "second@example.com", confirmed=True)
        session.flush()
        new_id = second.id
    assert new_id != old_id
    assert ctx.tokens.read_unsubscribe(token) == old_id  # points at nobody now


def test_migrations_build_exactly_the_models(new_database: Callable[..., str]) -> None:
    """A model change without its Alembic migration fails here, not in production."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = create_db_engine(new_database("fresh.db", migrated=False))
    upgrade(engine)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    engine.dispose()


def _schema(url: str) -> dict[str, dict[str, object]]:
    """What the migrations built, in backend-neutral terms (names, nullability, keys)."""
    engine = create_db_engine(url)
    try:
        upgrade(engine)
        insp = inspect(engine)
        out: dict[str, dict[str, object]] = {}
        for table in sorted(insp.get_table_names()):
            out[table] = {
                "columns": {c["name"]: bool(c["nullable"]) for c in insp.get_columns(table)},
                "primary key": tuple(insp.get_pk_constraint(table)["constrained_columns"]),
                "unique": sorted(
                    (u["name"] or "", tuple(u["column_names"]))
                    for u in insp.get_unique_constraints(table)
                ),
                "indexes": sorted(
                    (i["name"] or "", tuple(str(c) for c in i["column_names"]), bool(i["unique"]))
                    for i in insp.get_indexes(table)
                    if not i.get("duplicates_constraint")  # PostgreSQL's unique-constraint index
                ),
                "foreign keys": sorted(
                    (fk["referred_table"], tuple(fk["constrained_columns"]))
                    for fk in insp.get_foreign_keys(table)
                ),
            }
        return out
    finally:
        engine.dispose()


def test_migrations_build_the_same_schema_on_postgresql_and_sqlite(
    tmp_path: Path, new_database: Callable[..., str]
) -> None:
    """One set of migrations, two backends: the same tables, columns, keys and indexes."""
    if not on_postgres():
        pytest.skip("needs NEWSLETTER_TEST_DATABASE_URL naming a PostgreSQL server")
    on_sqlite = _schema(f"sqlite:///{tmp_path / 'compare.db'}")
    on_pg = _schema(new_database("compare", migrated=False))
    assert set(on_pg) == set(on_sqlite) >= TABLES
    for table in on_sqlite:
        assert on_pg[table] == on_sqlite[table], table
