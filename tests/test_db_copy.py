"""``newsletter db copy --to URL``: a whole deployment into another (empty) database.

From a SQLite file into a fresh database: PostgreSQL when the suite runs there
(NEWSLETTER_TEST_DATABASE_URL; the move the docs describe), else another SQLite file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from _delivery_support import add_subscribers, make_issue
from click.testing import CliRunner
from sqlalchemy import func, select

from newsletter import subscribers as subs
from newsletter.cli import main
from newsletter.config import load_settings
from newsletter.context import Context
from newsletter.models import Base, Delivery, Issue, Subscriber


def _counts(ctx: Context) -> dict[str, int]:
    with ctx.db.read() as session:
        return {
            t.name: int(session.scalar(select(func.count()).select_from(t)) or 0)
            for t in Base.metadata.sorted_tables
        }


def test_db_copy_moves_every_row_and_never_reuses_an_id(
    cli_env: dict[str, str], new_database: Callable[..., str], tmp_path: Path
) -> None:
    source_url = f"sqlite:///{tmp_path / 'source.db'}"
    env = {**cli_env, "NEWSLETTER_DATABASE_URL": source_url}
    ctx = Context.open(load_settings(env, dotenv_path=None))
    add_subscribers(ctx, 30)
    make_issue(ctx)
    with ctx.db.write() as session:
        last = subs.add_subscriber(session, "erased@example.com", "Gone", confirmed=True)
        session.flush()
        erased_id = last.id
        subs.remove(session, "erased@example.com", erase=True)
    before = _counts(ctx)
    ctx.close()
    target = new_database("target.db", migrated=False)  # PostgreSQL when the suite runs there
    result = CliRunner().invoke(main, ["db", "copy", "--to", target], env=env)
    assert result.exit_code == 0, result.output
    assert "counts verified" in result.output
    copied = Context.open(
        load_settings({**env, "NEWSLETTER_DATABASE_URL": target}, dotenv_path=None)
    )
    try:
        assert _counts(copied) == before and before["deliveries"] == 30
        with copied.db.write() as session:
            fresh = subs.add_subscriber(session, "new@example.com", "", confirmed=True)
            session.flush()
            assert fresh.id > erased_id  # the erased reader's id is not handed out again
        with copied.db.read() as session:
            issue = session.scalars(select(Issue)).one()
            assert issue.created_at.tzinfo is not None
            assert session.scalar(select(func.count()).select_from(Delivery)) == 30
            assert session.scalar(select(func.count()).select_from(Subscriber)) == 31
    finally:
        copied.close()
    again = CliRunner().invoke(main, ["db", "copy", "--to", target], env=env)
    assert again.exit_code == 1
    assert again.output.startswith("Error: the target database is not empty (rows in: ")
    assert "Traceback" not in again.output
