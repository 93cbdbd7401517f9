"""A database that refuses writes, under real commands (issue 16, finding 8).

``send --story`` on a full disk printed "Issue #2 frozen and queued for 31
subscribers." and then died with a raw SQLAlchemy traceback.  Here the disk is
really full (a 4 MiB tmpfs, filled up; mounting needs root, so the test is
skipped where that is not allowed), and the database really read-only (SQLite's
``mode=ro``) for the other commands.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from newsletter.config import load_settings
from newsletter.context import Context
from newsletter.stories import store as stories
from newsletter.subscribers import store as subscribers


def run(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-m", "newsletter", *args],
        env=clean,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def seed(env: dict[str, str], readers: int = 31) -> int:
    ctx = Context.open(load_settings(env, dotenv_path=None))
    try:
        with ctx.db.write() as session:
            for i in range(readers):
                subscribers.add_subscriber(session, f"r{i}@example.com", confirmed=True)
            story, _ = stories.add_story(
                session, "A story", "https://e.example/a", "Four words of summary.", feature=True
            )
            return story.id
    finally:
        ctx.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr!r}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_send_on_a_full_disk_is_one_line_and_announces_nothing(
    env: dict[str, str], small_disk: Path, tmp_path: Path
) -> None:
    penv = {**env, "NEWSLETTER_DATABASE_URL": f"sqlite:///{small_disk / 'subscribers.db'}"}
    story = seed(penv)
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * (free - 40_000))  # room to open, not to commit
    result = run(penv, tmp_path, "send", "--story", str(story), "--yes")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == ["Error: database error: database or disk is full"]
    assert "frozen and queued" not in result.stdout
    (small_disk / "filler").unlink()
    ctx = Context.open(load_settings(penv, dotenv_path=None))
    try:
        from sqlalchemy import func, select

        from newsletter.models import Delivery, Issue

        with ctx.db.read() as session:  # nothing half-made was kept
            assert session.scalar(select(func.count()).select_from(Issue)) == 0
            assert session.scalar(select(func.count()).select_from(Delivery)) == 0
    finally:
        ctx.close()


@pytest.mark.parametrize(
    "args",
    [
        ("subscribers", "add", "new@example.com"),
        ("subscribers", "remove", "r1@example.com"),
        ("stories", "add", "--title", "T", "--url", "https://e.example/t"),
        ("stories", "unfeature", "1"),
        ("send", "--story", "1", "--yes"),
    ],
)
@pytest.mark.sqlite_only  # a read-only SQLite file
def test_every_command_on_a_read_only_database_is_one_line(
    env: dict[str, str], tmp_path: Path, args: tuple[str, ...]
) -> None:
    seed(env, readers=2)
    db = env["NEWSLETTER_DATABASE_URL"].removeprefix("sqlite:///")
    penv = {**env, "NEWSLETTER_DATABASE_URL": f"sqlite:///file:{db}?mode=ro&uri=true"}
    result = run(penv, tmp_path, *args)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: database error: attempt to write a readonly database"
    )
    assert "frozen and queued" not in result.stdout
