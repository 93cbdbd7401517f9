"""mutmut's verdicts per module, as the kill-rate table in BENCHMARKS.md.

Run after ``mutmut run --max-children 2`` (configured in pyproject.toml
``[tool.mutmut]``), from the project root::

    python bench/mutation_report.py                  # the table
    python bench/mutation_report.py --rerun          # names to re-check after adding tests
    python bench/mutation_report.py --also ../other  # merge another checkout's verdicts

It reads mutmut's own result files (``mutants/**/*.py.meta``).  A timeout counts
as killed (the tests did not pass: a mutant that makes a send loop spin forever
is caught), and so does mutmut's SIGKILL after its time limit (it reports that
as "segfault").  "no tests" and "not checked" count against the rate, so an
unfinished run cannot look better than it is.

``--also DIR`` merges the verdicts of mutmut runs in other checkouts of the same
code (several machines, or one module each): a mutant counts as killed if any
run killed it, but only where that run mutated the very same function (mutmut's
hash of the function's source matches ours).  The other runs' tests must be a
subset of ours, which holds for checkouts this one has merged: a kill by fewer
tests is a kill by all of them.

``--rerun`` prints the survivors, untested and timed-out mutants, for
``mutmut run $(... --rerun)``: mutmut keeps every verdict it has, and a test
added later only reaches the mutants named to it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests"}
STATUS.update({36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout"})
STATUS.update({37: "caught by type check", -9: "timeout", -11: "timeout", 34: "skipped"})
KILLED = {"killed", "timeout", "caught by type check"}
RERUN = {"survived", "no tests", "timeout", "suspicious"}
COLUMNS = ["killed", "timeout", "survived", "no tests", "not checked"]

Verdict = tuple[str, str]  # (status, hash of the mutated function)


def verdicts(root: Path) -> dict[str, Verdict]:
    """Every mutant of the checkout at ``root``: its status and its function's hash."""
    found: dict[str, Verdict] = {}
    for meta in sorted((root / "mutants").rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        hashes = data.get("hash_by_function_name", {})
        for name, code in data.get("exit_code_by_key", {}).items():
            status = "not checked" if code in (None, 2) else STATUS.get(code, "suspicious")
            function = name.rsplit("__mutmut_", 1)[0].rsplit(".", 1)[-1]
            found[name] = (status, hashes.get(function, ""))
    return found


def merged(ours: dict[str, Verdict], others: list[dict[str, Verdict]]) -> dict[str, str]:
    """Our statuses, upgraded by any other run over the same function."""
    result = {}
    for name, (status, digest) in ours.items():
        seen = [status] + [o[name][0] for o in others if name in o and o[name][1] == digest]
        result[name] = _best(seen)
    return result


def _best(seen: list[str]) -> str:
    for wanted in ("killed", "caught by type check", "timeout", "survived", "no tests"):
        if wanted in seen:
            return wanted
    return "not checked" if "not checked" in seen else seen[0]


def module_of(mutant: str) -> str:
    """``newsletter.delivery.engine.xǁRunǁ_push__mutmut_3`` -> ``newsletter/delivery/engine.py``."""
    return mutant.rsplit("__mutmut_", 1)[0].rsplit(".", 1)[0].replace(".", "/") + ".py"


def table(statuses: dict[str, str]) -> str:
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    for name, status in statuses.items():
        by_module[module_of(name)][status] += 1
    lines = [
        "| module | mutants | " + " | ".join(COLUMNS) + " | kill rate |",
        "|---|---|" + "---|" * len(COLUMNS) + "---|",
    ]
    total: Counter[str] = Counter()
    for module in sorted(by_module):
        total.update(by_module[module])
        lines.append(_row(module, by_module[module]))
    lines.append(_row("**all**", total))
    return "\n".join(lines)


def _row(label: str, counts: Counter[str]) -> str:
    n = sum(counts.values())
    killed = sum(counts[s] for s in KILLED)
    shown = [counts["killed"] + counts["caught by type check"]] + [counts[c] for c in COLUMNS[1:]]
    other = n - sum(shown)
    rate = 100 * killed / n if n else 0.0
    extra = f" (+{other} other)" if other else ""
    return f"| {label} | {n}{extra} | " + " | ".join(map(str, shown)) + f" | {rate:.1f} % |"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rerun", action="store_true", help="print mutants to re-check")
    parser.add_argument("--also", action="append", default=[], type=Path, metavar="DIR")
    args = parser.parse_args()
    ours = verdicts(Path.cwd())
    if not ours:
        print("no mutmut results here: run `mutmut run --max-children 2` first", file=sys.stderr)
        return 1
    statuses = merged(ours, [verdicts(d) for d in args.also])
    if args.rerun:
        print("\n".join(name for name, status in statuses.items() if status in RERUN))
    else:
        print(table(statuses))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
