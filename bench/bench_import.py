"""Benchmark: import a 100,000-row subscriber CSV into a fresh SQLite file.

Prints rows per second for each step (parse+validate without the database, the
database write, the whole ``newsletter subscribers import`` command) plus a
re-import of the same file (every address known: the lookup path) and an export.
Run: ``python bench/bench_import.py [ROWS]``.  Everything lives in a temp dir.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import tempfile
import time
from pathlib import Path

from click.testing import CliRunner

from newsletter.cli import main
from newsletter.config import load_settings
from newsletter.context import Context
from newsletter.subscribers.csvio import apply_import, export_csv, parse_csv

NAMES = ["Ana Núñez", "Björn Ødegård", "Chen Wei", "Dara O'Neill", "Émile Zola", "Fatima Zahra"]


def write_csv(path: Path, rows: int) -> None:
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["email", "name"])
        for i in range(rows):
            domain = "bücher.example" if i % 50 == 0 else f"example{i % 7}.com"
            writer.writerow([f"Reader.{i}@{domain}", NAMES[i % len(NAMES)]])


class Timer:
    """Wall and CPU time of a block: on a shared, busy machine the CPU figure is the
    one that says what the code costs; the wall figure is what a user waits."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu

    def rate(self, rows: int) -> str:
        return (
            f"{rows / self.wall:>9,.0f} rows/s wall ({self.wall:5.2f} s), "
            f"{rows / self.cpu:>9,.0f} rows/s CPU ({self.cpu:5.2f} s)"
        )


def main_bench(rows: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = folder / "subscribers.csv"
        write_csv(path, rows)
        data = path.read_bytes()
        print(f"{rows:,} rows, {len(data) / 1e6:.1f} MB CSV")

        settings = load_settings(
            {"NEWSLETTER_DATABASE_URL": f"sqlite:///{folder / 'domain.db'}"}, dotenv_path=None
        )
        ctx = Context.open(settings)
        with Timer() as parse_t:
            parsed = parse_csv(data)
        with Timer() as write_t, ctx.db.write() as session:
            report = apply_import(session, parsed, confirmed=True)
        assert report.added == rows and report.ok, report
        print(f"parse + validate      {parse_t.rate(rows)}")
        print(f"database write        {write_t.rate(rows)}")

        with Timer() as again_t, ctx.db.write() as session:
            again = apply_import(session, parse_csv(data), confirmed=True)
        assert again.added == 0 and again.unchanged == rows, again
        print(f"re-import (all known) {again_t.rate(rows)}")

        with Timer() as export_t, ctx.db.read() as session:
            exported = export_csv(session, io.StringIO())
        print(f"export                {export_t.rate(exported)}")
        ctx.close()

        env = {
            "NEWSLETTER_DATABASE_URL": f"sqlite:///{folder / 'cli.db'}",
            "NEWSLETTER_SECRET_KEY": "bench-secret-key-0123456789",
        }
        for key in [k for k in os.environ if k.startswith("NEWSLETTER_")]:
            del os.environ[key]
        with Timer() as cli_t:
            result = CliRunner().invoke(main, ["subscribers", "import", str(path)], env=env)
        assert result.exit_code == 0, result.output
        print(f"CLI import (all-in)   {cli_t.rate(rows)}  (incl. creating the database)")


if __name__ == "__main__":
    main_bench(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
