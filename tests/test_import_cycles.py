"""The import-circle check: the package has none, and the check does find one."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "check_import_cycles.py"


def run(root: Path | None = None) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, str(SCRIPT)] + ([str(root)] if root else [])
    return subprocess.run(args, capture_output=True, text=True, check=False)


def write(root: Path, files: dict[str, str]) -> Path:
    for name, body in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(body))
    return root


def test_newsletter_has_no_import_circle() -> None:
    result = run()
    assert result.returncode == 0, result.stderr
    assert "no import circles" in result.stdout


def test_a_function_level_circle_fails(tmp_path: Path) -> None:
    pkg = write(
        tmp_path / "pkg",
        {
            "__init__.py": "",
            "a.py": "from .b import thing\n",
            "b.py": "thing = 1\n\ndef later():\n    from . import a\n",
        },
    )
    result = run(pkg)
    assert result.returncode == 1
    assert "import circle: pkg.a -> pkg.b -> pkg.a" in result.stderr


def test_a_circle_through_a_lazy_surface_fails(tmp_path: Path) -> None:
    pkg = write(
        tmp_path / "pkg",
        {
            "__init__.py": "",
            "low/__init__.py": '_SURFACE = {"helper": "impl"}\n',
            "low/impl.py": "from ..high import run\n\ndef helper():\n    pass\n",
            "high.py": "from .low import helper\n\ndef run():\n    pass\n",
        },
    )
    result = run(pkg)
    assert result.returncode == 1
    assert "pkg.high" in result.stderr and "pkg.low.impl" in result.stderr


def test_type_checking_imports_do_not_count(tmp_path: Path) -> None:
    pkg = write(
        tmp_path / "pkg",
        {
            "__init__.py": "",
            "a.py": "from .b import thing\n",
            "b.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from .a import x\n"
                "thing = 1\n"
            ),
        },
    )
    result = run(pkg)
    assert result.returncode == 0, result.stderr
