"""Migration 0007_readers on a real SQLite file: existing rows survive, CHECKs hold, and
it goes down and up again."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic import command

from newsletter.config import Settings
from newsletter.db import Database, alembic_config

_MIGRATION = Path(__file__).resolve().parents[1] / "newsletter/migrations/versions/0007_readers.py"
PREVIOUS = next(
    line.split("=", 1)[1].strip().strip('"')
    for line in _MIGRATION.read_text().splitlines()
    if line.startswith("down_revision")
)


def test_readers_migration_keeps_rows_and_checks_and_round_trips(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    path = tmp_path / "old.db"
    bare = Database.open(make_settings(NEWSLETTER_DATABASE_URL=f"sqlite:///{path}"), migrate=False)
    try:
        config = alembic_config(bare.engine)
        with bare.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, PREVIOUS)
        with sqlite3.connect(path) as raw:  # a reader from before this migration
            raw.execute(
                "INSERT INTO subscribers (email, name, status, created_at, bounce_count, source)"
                " VALUES ('old@example.com', '', 'active', '2026-01-01 00:00:00', 0, 'cli')"
            )
        with bare.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
        with sqlite3.connect(path) as raw:
            row = raw.execute("SELECT id, frequency, sections FROM subscribers").fetchone()
            assert row == (1, "daily", None)  # everyone who was there stays daily, all sections
            with pytest.raises(sqlite3.IntegrityError):
                raw.execute("UPDATE subscribers SET frequency = 'hourly'")
            weekly = (
                "INSERT INTO issues (kind, subject, status, html, text, preheader, created_at,"
                " edition_week) VALUES ('weekly', 's', 'sent', 'h', 't', '', '2026-03-08',"
                " '2026-W10')"
            )
            raw.execute(weekly)
            with pytest.raises(sqlite3.IntegrityError):  # one weekly per ISO week
                raw.execute(weekly)
            with pytest.raises(sqlite3.IntegrityError):
                raw.execute(
                    "INSERT INTO issues (kind, subject, status, html, text, preheader, created_at)"
                    " VALUES ('hourly', 's', 'sent', 'h', 't', '', '2026-03-08')"
                )
            ddl = raw.execute("SELECT sql FROM sqlite_master WHERE name = 'subscribers'").fetchone()
            assert "AUTOINCREMENT" in ddl[0]  # ids are still never reused
        with bare.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, PREVIOUS)
            command.upgrade(config, "head")
        with sqlite3.connect(path) as raw:
            assert raw.execute("SELECT email FROM subscribers").fetchall() == [("old@example.com",)]
    finally:
        bare.dispose()
