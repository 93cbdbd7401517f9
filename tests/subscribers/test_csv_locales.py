"""CSV export read the way spreadsheets of every locale split it (issue 16, finding 7).

``x;=cmd|' /C calc'!A0;`` was exported so that a spreadsheet splitting on ``;``
got a cell starting with ``=``.  Through the real CLI and a real SQLite file.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from click.testing import CliRunner

from newsletter.cli import main
from newsletter.subscribers.csvio import csv_cell, csv_safe

HOSTILE = [
    "x;=cmd|' /C calc'!A0;",
    "a,+1+2",
    "tab\t@SUM(A1)",
    "semi; -2",
    "x;\t=y",
    "cr\r=1",
]


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_no_cell_starts_a_formula_in_any_locale(
    cli_env: dict[str, str], tmp_path: Path, delimiter: str
) -> None:
    for i, name in enumerate(HOSTILE):
        run("subscribers", "add", f"r{i}@example.com", "--name", name, "--confirmed")
    out = tmp_path / "export.csv"
    run("subscribers", "export", "-o", str(out))
    text = out.read_text(encoding="utf-8-sig")
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    cells = [cell for row in rows for cell in row]
    assert cells and not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    # Read with the file's own delimiter, every name comes back with its text intact.
    own = list(csv.DictReader(io.StringIO(text, newline="")))
    names = {row["email"]: row["name"] for row in own}
    assert names["r0@example.com"] == "x;'=cmd|' /C calc'!A0;"


def test_cells_with_any_separator_are_quoted() -> None:
    assert csv_cell("a;b") == '"a;b"' and csv_cell("a\tb") == '"a\tb"'
    assert csv_cell('say "hi"') == '"say ""hi"""' and csv_cell("plain") == "plain"
    assert csv_safe("x;=cmd;+1,-2\t@3") == "x;'=cmd;'+1,'-2\t'@3"


def test_the_export_imports_back_unchanged(
    cli_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i, name in enumerate(HOSTILE[:4]):
        run("subscribers", "add", f"r{i}@example.com", "--name", name, "--confirmed")
    first = tmp_path / "first.csv"
    run("subscribers", "export", "-o", str(first))
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", f"sqlite:///{tmp_path / 'b.db'}")
    run("subscribers", "import", str(first), "--confirmed")
    second = tmp_path / "second.csv"
    run("subscribers", "export", "-o", str(second))

    def names(path: Path) -> dict[str, str]:
        rows = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"), newline=""))
        return {row["email"]: row["name"] for row in rows}

    assert names(first) == names(second)
