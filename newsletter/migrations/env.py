"""Alembic environment: runs against the engine handed over by ``newsletter.db``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

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
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations_online()
