"""A CLI that answers at once: each command loads only the libraries it uses.

Counted, not timed (wall-clock bounds flake on a loaded machine): the command runs
in a fresh interpreter, which then reports the heavy top-level packages present in
``sys.modules``.  ``bench/bench_cli.py`` prints the wall times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = (
    "alembic",
    "apscheduler",
    "cssutils",
    "dkim",
    "email_validator",
    "feedparser",
    "flask",
    "jinja2",
    "lxml",
    "premailer",
    "rich",
    "sqlalchemy",
    "waitress",
    "werkzeug",
)
PROBE = """
import json, sys
from newsletter.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
except SystemExit:
    pass
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))))
"""
EXAMPLES = Path(__file__).resolve().parents[2] / "newsletter" / "examples"


def loaded(cwd: Path, *args: str, code: str = PROBE) -> set[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update(
        NEWSLETTER_DATABASE_URL=f"sqlite:///{cwd / 'cli.db'}",
        NEWSLETTER_OUTBOX=str(cwd / "outbox"),
    )
    result = subprocess.run(
        [sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{code}", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return set(found)


@pytest.fixture
def small_db(tmp_path: Path) -> Path:
    """A migrated database with the example stories (none featured) and readers."""
    for args in (
        ("stories", "import", str(EXAMPLES / "stories.xml")),
        ("subscribers", "import", str(EXAMPLES / "subscribers.csv"), "--confirmed"),
    ):
        loaded(tmp_path, *args)
    return tmp_path


def test_help_loads_no_heavy_library(tmp_path: Path) -> None:
    assert loaded(tmp_path, "--help") == set()
    assert loaded(tmp_path, "send", "--help") == set()


def test_package_surfaces_load_no_heavy_library(tmp_path: Path) -> None:
    code = (
        "import json, sys\n"
        "import newsletter.stories, newsletter.subscribers, newsletter.mail\n"
        "import newsletter.delivery, newsletter.web, newsletter.timetable\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(HEAVY))))\n"
    )
    assert loaded(tmp_path, code=code) == set()


def test_stories_list_loads_only_the_database_and_the_table(small_db: Path) -> None:
    assert loaded(small_db, "stories", "list") == {"sqlalchemy", "rich"}


def test_send_with_nothing_new_renders_nothing_and_needs_no_alembic(small_db: Path) -> None:
    assert loaded(small_db, "send", "--yes") == {"sqlalchemy", "rich"}
