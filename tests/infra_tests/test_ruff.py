"""The test suite includes ruff: the repository must lint clean and stay formatted with the pinned
ruff."""

from __future__ import annotations

import subprocess
import sys

from nasvit_testing.layout import REPO_ROOT


def _ruff(*args: str) -> subprocess.CompletedProcess[str]:
    """``ruff <args> --no-cache .`` from the repository root, with the venv's ruff."""
    command = [sys.executable, "-m", "ruff", *args, "--no-cache", "."]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)


def test_ruff_check_passes_on_the_repository() -> None:
    result = _ruff("check", "--output-format", "concise")
    assert result.returncode == 0, (
        f"`ruff check .` failed (exit {result.returncode}); "
        f"`.venv/bin/ruff check --fix .` repairs many of these:\n{result.stdout}{result.stderr}"
    )


def test_ruff_format_leaves_the_repository_unchanged() -> None:
    result = _ruff("format", "--check")
    assert result.returncode == 0, (
        f"`ruff format --check .` failed (exit {result.returncode}); "
        f"`.venv/bin/ruff format .` rewrites the files it lists:\n{result.stdout}{result.stderr}"
    )
