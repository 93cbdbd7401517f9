"""Alembic environment: runs against the engine handed over by ``newsletter.db``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, Engine

from newsletter.config import load_settings
from newsletter.db import create_db_engine
from newsletter.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    if not isinstance(engine, Engine):  # invoked by the alembic CLI itself
        engine = create_db_engine(load_settings().database_url)
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # Batch mode rebuilds a table by DROP + rename; with foreign keys on, the
            # DROP would cascade-delete every row that references it (deliveries of
            # subscribers).  The pragma only takes effect outside a transaction.
            _foreign_keys(connection, on=False)
        try:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=sqlite,
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
        finally:
            if sqlite:
                _foreign_keys(connection, on=True)


def _foreign_keys(connection: Connection, on: bool) -> None:
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(f"PRAGMA foreign_keys = {'ON' if on else 'OFF'}")
    finally:
        cursor.close()


run_migrations_online()
