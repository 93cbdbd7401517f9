"""Benchmark: how fast the CLI answers (wall time of fresh processes).

Prints, for each command, the best and the median of ``--runs`` runs, next to a
bare ``python -c pass``.  Not a pass/fail test; targets from issue 9:

* ``newsletter --help``                       <= 0.25 s
* ``newsletter stories list`` (small database) <= 0.4 s
* the fixed cost of ``send``                  <= 0.6 s: ``send --yes`` when there is
  nothing new (settings, database, schema check, the unfinished-issue and digest
  queries: everything but rendering and the messages), plus, for scale, the same
  with one featured story and no subscriber (the issue is rendered, nobody mailed).

The database is a fresh SQLite file with the example feed (20 stories) and the
example readers, in a temporary folder; mail goes to a Maildir outbox there.

Run: ``python bench/bench_cli.py [--runs 7]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "newsletter" / "examples"
TARGETS = {"--help": 0.25, "stories list": 0.4, "send --yes (nothing new)": 0.6}


def newsletter_cmd() -> list[str]:
    """The installed console script beside this interpreter, else ``python -m newsletter``."""
    script = Path(sys.executable).with_name("newsletter")
    return [str(script)] if script.exists() else [sys.executable, "-m", "newsletter"]


def wall(args: Sequence[str], env: dict[str, str], cwd: Path, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(args, env=env, cwd=cwd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    cli = newsletter_cmd()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
        env.update(
            NEWSLETTER_DATABASE_URL=f"sqlite:///{folder / 'bench.db'}",
            NEWSLETTER_OUTBOX=str(folder / "outbox"),
        )
        setup = [
            ["stories", "import", str(EXAMPLES / "stories.xml")],
            ["subscribers", "import", str(EXAMPLES / "subscribers.csv"), "--confirmed"],
        ]
        for args in setup:
            subprocess.run([*cli, *args], env=env, cwd=folder, check=True, capture_output=True)
        rows: list[tuple[str, list[float]]] = [
            ("python -c pass", wall([sys.executable, "-c", "pass"], env, folder, runs)),
            ("--help", wall([*cli, "--help"], env, folder, runs)),
            ("stories list", wall([*cli, "stories", "list"], env, folder, runs)),
            ("send --yes (nothing new)", wall([*cli, "send", "--yes"], env, folder, runs)),
        ]
        # One featured story and no subscriber: the issue is rendered (Jinja2 +
        # premailer), then nothing is sent or recorded.
        empty = dict(env, NEWSLETTER_DATABASE_URL=f"sqlite:///{folder / 'empty.db'}")
        subprocess.run(
            [
                *cli,
                "stories",
                "add",
                "--title",
                "One",
                "--url",
                "https://example.com/1",
                "--feature",
            ],
            env=empty,
            cwd=folder,
            check=True,
            capture_output=True,
        )
        rows.append(
            (
                "send --yes (no subscribers, renders)",
                wall([*cli, "send", "--yes"], empty, folder, runs),
            )
        )
        shutil.rmtree(folder / "outbox", ignore_errors=True)
    print(f"{'command':<40} {'best':>7} {'median':>7}  target   ({runs} runs, {' '.join(cli)})")
    for label, times in rows:
        target = TARGETS.get(label)
        mark = f"<= {target:.2f} s" if target else ""
        best, median = min(times), statistics.median(times)
        print(f"{label:<40} {best:6.3f}s {median:6.3f}s  {mark}")


if __name__ == "__main__":
    main()
