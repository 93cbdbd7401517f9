"""Functions stay short: the length check passes on newsletter/ and catches a long one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "check_function_length.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False
    )


def test_no_function_in_newsletter_is_longer_than_100_lines() -> None:
    result = run()
    assert result.returncode == 0, result.stderr


def test_a_long_function_fails(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(12))
    (tmp_path / "m.py").write_text(f"def short():\n    pass\n\n\ndef long():\n{body}\n")
    result = run("--max", "10", str(tmp_path))
    assert result.returncode == 1
    assert "m.py:5: long is 13 lines (> 10)" in result.stderr
    assert "short" not in result.stderr
