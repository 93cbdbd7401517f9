"""mutmut's verdicts per module, as the kill-rate table in BENCHMARKS.md.

Run after ``mutmut run --max-children 2`` (configured in pyproject.toml
``[tool.mutmut]``), from the project root::

    python bench/mutation_report.py            # the table
    python bench/mutation_report.py --rerun    # names to re-check after adding tests

A timeout counts as killed (the tests did not pass: a mutant that makes a send
loop spin forever is caught); "no tests" and "not checked" count against the
rate, so an unfinished run cannot look better than it is.  ``--rerun`` prints the
survivors, untested and timed-out mutants, for ``mutmut run $(... --rerun)``:
mutmut keeps every verdict it has, and a test added later only reaches the
mutants named to it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import Counter, defaultdict

KILLED = {"killed", "timeout", "caught by type check"}
RERUN = {"survived", "no tests", "timeout", "suspicious"}


def verdicts() -> list[tuple[str, str]]:
    """(mutant name, status) for every mutant, from ``mutmut results --all true``."""
    command = [sys.executable, "-m", "mutmut", "results", "--all", "true"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and "__mutmut_" in name:
            rows.append((name, status))
    return rows


def module_of(mutant: str) -> str:
    """``newsletter.delivery.engine.xǁRunǁ_push__mutmut_3`` -> ``newsletter/delivery/engine.py``."""
    dotted = mutant.split(".x_")[0].split(".xǁ")[0]
    return dotted.replace(".", "/") + ".py"


def table(rows: list[tuple[str, str]]) -> str:
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    for name, status in rows:
        by_module[module_of(name)][status] += 1
    lines = [
        "| module | mutants | killed | timeout | survived | no tests | not checked | kill rate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    total: Counter[str] = Counter()
    for module in sorted(by_module):
        counts = by_module[module]
        total.update(counts)
        lines.append(_row(module, counts))
    lines.append(_row("**all**", total))
    return "\n".join(lines)


def _row(label: str, counts: Counter[str]) -> str:
    n = sum(counts.values())
    killed = sum(counts[s] for s in KILLED)
    rate = 100 * killed / n if n else 0.0
    return (
        f"| {label} | {n} | {counts['killed'] + counts['caught by type check']}"
        f" | {counts['timeout']} | {counts['survived']} | {counts['no tests']}"
        f" | {counts['not checked']} | {rate:.1f} % |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rerun", action="store_true", help="print mutants to re-check")
    args = parser.parse_args()
    rows = verdicts()
    if not rows:
        print("no mutmut results here: run `mutmut run --max-children 2` first", file=sys.stderr)
        return 1
    if args.rerun:
        print("\n".join(name for name, status in rows if status in RERUN))
    else:
        print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
