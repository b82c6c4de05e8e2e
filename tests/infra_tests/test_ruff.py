"""The test suite includes ruff: the repository must lint clean with the pinned ruff."""

from __future__ import annotations

import subprocess
import sys

from ._layout import REPO_ROOT


def test_ruff_check_passes_on_the_repository() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, (
        f"`ruff check .` failed (exit {result.returncode}); "
        f"`.venv/bin/ruff check --fix .` repairs many of these:\n{result.stdout}{result.stderr}"
    )
