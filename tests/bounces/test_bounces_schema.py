"""Settings and schema of issue 11: validation, and the migration keeping existing data."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text

from newsletter.config import ConfigError, Settings, load_settings
from newsletter.db import alembic_config, create_db_engine


def test_bounce_settings_defaults_and_validation() -> None:
    assert (Settings().bounce_address, Settings().soft_bounce_limit) == (None, 3)
    loaded = load_settings(
        {
            "NEWSLETTER_BOUNCE_ADDRESS": "bounces@news.example.org",
            "NEWSLETTER_SOFT_BOUNCE_LIMIT": "5",
            "NEWSLETTER_SES_TOPIC_ARNS": "arn:aws:sns:eu-west-1:123456789012:a, "
            "arn:aws:sns:us-east-1:123456789012:b",
        },
        dotenv_path=None,
    )
    assert loaded.soft_bounce_limit == 5 and len(loaded.ses_topic_arns) == 2
    for name, value in (
        ("NEWSLETTER_BOUNCE_ADDRESS", "bounces+x@news.example.org"),
        ("NEWSLETTER_BOUNCE_ADDRESS", "Bounces <b@example.org>"),
        ("NEWSLETTER_BOUNCE_ADDRESS", "b@example.org\r\nBcc: x@y.z"),
        ("NEWSLETTER_SES_TOPIC_ARNS", "https://evil.example/topic"),
        ("NEWSLETTER_SOFT_BOUNCE_LIMIT", "0"),
        ("NEWSLETTER_BOUNCE_POLL_MINUTES", "often"),
    ):
        with pytest.raises(ConfigError, match=name):
            load_settings({name: value}, dotenv_path=None)


def test_migration_keeps_deliveries_and_allows_complained(tmp_path: Path) -> None:
    """SQLite rebuilds ``subscribers`` to change its CHECK: no cascade may eat deliveries."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'old.db'}")
    command.upgrade(alembic_config(engine), "0001")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO subscribers"
                " (id, email, name, status, created_at, bounce_count, source)"
                " VALUES (7, 'a@example.org', '', 'active', '2026-01-01 00:00:00', 0, 'cli')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO issues (id, kind, subject, status, html, text, preheader, created_at)"
                " VALUES (1, 'manual', 's', 'sent', 'h', 't', '', '2026-01-01 00:00:00')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO deliveries (issue_id, subscriber_id, status, attempts)"
                " VALUES (1, 7, 'sent', 1)"
            )
        )
    command.upgrade(alembic_config(engine), "head")
    with engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM deliveries")).scalar() == 1
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        conn.execute(text("UPDATE subscribers SET status = 'complained'"))
        with pytest.raises(Exception, match="CHECK"):
            conn.execute(text("UPDATE subscribers SET status = 'bogus'"))
    with engine.begin() as conn:  # ids are still never reused
        sql = conn.execute(
            text("SELECT sql FROM sqlite_master WHERE name = 'subscribers'")
        ).scalar()
        assert "AUTOINCREMENT" in str(sql)
    command.downgrade(alembic_config(engine), "0001")
    with engine.begin() as conn:
        assert conn.execute(text("SELECT status FROM subscribers")).scalar() == "bounced"
        assert conn.execute(text("SELECT count(*) FROM deliveries")).scalar() == 1
    engine.dispose()
