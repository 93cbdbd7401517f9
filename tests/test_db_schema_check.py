"""The cheap schema check on open agrees with Alembic and leaves Alembic unloaded."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from newsletter.db import (
    Database,
    alembic_config,
    create_db_engine,
    current_revision,
    head_revision,
    upgrade,
)


def test_head_from_the_files_is_alembics_head(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        alembic_head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    finally:
        engine.dispose()
    assert head_revision() == alembic_head is not None


def test_an_up_to_date_database_opens_without_loading_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    script = textwrap.dedent(
        f"""
        import sys
        from newsletter.config import load_settings
        from newsletter.db import Database
        settings = load_settings(environ={{"NEWSLETTER_DATABASE_URL": {url!r}}}, dotenv_path=None)
        Database.open(settings).dispose()
        print(sorted(m for m in sys.modules if m.split(".")[0] == "alembic")[:1])
        """
    )
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() != "[]"  # the empty database was migrated: Alembic ran
    second = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "[]"


def test_current_revision_reads_what_alembic_wrote(tmp_path: Path) -> None:
    db = Database(create_db_engine(f"sqlite:///{tmp_path / 'a.db'}"))
    try:
        assert current_revision(db.engine) is None
        assert upgrade(db.engine) is True
        with db.engine.connect() as conn:
            theirs = MigrationContext.configure(conn).get_current_revision()
        assert current_revision(db.engine) == theirs == head_revision()
        assert upgrade(db.engine) is False
    finally:
        db.dispose()
