"""``newsletter db copy --to URL``: move a deployment to another database (SQLite → PostgreSQL).

Every table of the schema is copied in dependency order (parents before the rows
that point at them), in chunks, inside one transaction on the target, which the
Alembic migrations have brought to the same revision first.  Then the row counts
of both sides are compared, table by table, and id sequences are moved past the
highest id ever handed out (so an erased subscriber's id is never reused, as
SQLite's AUTOINCREMENT promised).  The target must be empty: nothing is merged.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, Engine, Integer, Table, func, insert, select, text

from .db import upgrade
from .models import Base

CHUNK = 2_000


class CopyError(RuntimeError):
    """The copy cannot be made or did not verify (the message says which table)."""


@dataclass(frozen=True)
class Copied:
    table: str
    rows: int


def copy_database(source: Engine, target: Engine) -> list[Copied]:
    """Copy every table from ``source`` to the empty ``target``; the per-table counts."""
    upgrade(target)
    tables = list(Base.metadata.sorted_tables)
    with target.connect() as conn:
        busy = [t.name for t in tables if conn.scalar(select(func.count()).select_from(t))]
    if busy:
        raise CopyError(f"the target database is not empty (rows in: {', '.join(busy)})")
    copied: list[Copied] = []
    with source.connect() as read, target.begin() as write:
        for table in tables:
            rows = _copy_table(read, write, table)
            copied.append(Copied(table.name, rows))
        for table in tables:
            _move_sequence(read, write, table)
    _verify(source, target, copied)
    return copied


def _copy_table(read: Connection, write: Connection, table: Table) -> int:
    order = list(table.primary_key.columns)
    result = read.execution_options(stream_results=True).execute(select(table).order_by(*order))
    rows = 0
    while chunk := result.fetchmany(CHUNK):
        write.execute(insert(table), [dict(row._mapping) for row in chunk])
        rows += len(chunk)
    return rows


def _serial_column(table: Table) -> str | None:
    pk = list(table.primary_key.columns)
    if len(pk) == 1 and isinstance(pk[0].type, Integer):
        return pk[0].name
    return None


def _highest_id(read: Connection, table: Table, column: str) -> int:
    """The highest id the source ever handed out (not only the highest still there)."""
    highest = int(read.scalar(select(func.max(table.c[column]))) or 0)
    dialect = read.dialect.name
    if dialect == "sqlite" and table.kwargs.get("sqlite_autoincrement"):
        seq = read.scalar(
            text("SELECT seq FROM sqlite_sequence WHERE name = :t"), {"t": table.name}
        )
        highest = max(highest, int(seq or 0))
    elif dialect == "postgresql":
        seq = read.scalar(
            text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table.name, "c": column}
        )
        if seq:
            # Bandit B608: seq is PostgreSQL's own answer (pg_get_serial_sequence of our
            # table), a quoted identifier, never user input; it cannot be a bind value.
            last = read.scalar(text(f"SELECT last_value FROM {seq}"))  # noqa: S608  # nosec B608
            highest = max(highest, int(last or 0))
    return highest


def _move_sequence(read: Connection, write: Connection, table: Table) -> None:
    column = _serial_column(table)
    if column is None:
        return
    highest = _highest_id(read, table, column)
    if highest == 0:
        return
    if write.dialect.name == "postgresql":
        write.execute(
            text("SELECT setval(pg_get_serial_sequence(:t, :c), :v)"),
            {"t": table.name, "c": column, "v": highest},
        )
    elif write.dialect.name == "sqlite" and table.kwargs.get("sqlite_autoincrement"):
        write.execute(
            text("UPDATE sqlite_sequence SET seq = max(seq, :v) WHERE name = :t"),
            {"t": table.name, "v": highest},
        )


def _verify(source: Engine, target: Engine, copied: list[Copied]) -> None:
    with source.connect() as a, target.connect() as b:
        for item in copied:
            table = Base.metadata.tables[item.table]
            there = b.scalar(select(func.count()).select_from(table))
            here = a.scalar(select(func.count()).select_from(table))
            if here != there or there != item.rows:
                raise CopyError(
                    f"{item.table}: {here} rows in the source, {there} in the target after the copy"
                )
