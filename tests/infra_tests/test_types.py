"""The test suite includes mypy: the nasvit namespace must type-check with pyproject's [tool.mypy]
(strict for nasvit.nn, nasvit.search_spaces and nasvit.latency_db)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nasvit_testing.layout import REPO_ROOT, package_dirs, pyproject


def test_mypy_sees_every_mapped_folder_under_its_import_name() -> None:
    """mypy cannot follow [tool.setuptools.package-dir]; .ci/mypy_path/ links each mapped folder to
    where its import name puts it, and [tool.mypy] packages lists every mapped root."""
    config = pyproject()["tool"]["mypy"]
    links = REPO_ROOT / ".ci" / "mypy_path"
    unlinked = [
        f"{name} -> {folder}"
        for name, folder in package_dirs().items()
        if (links.joinpath(*name.split("."))).resolve() != folder
        and (REPO_ROOT.joinpath(*name.split("."))).resolve() != folder
    ]
    assert not unlinked, f"add links under .ci/mypy_path/ for: {', '.join(unlinked)}"
    unchecked = sorted(set(package_dirs()) - set(config["packages"]))
    assert not unchecked, f"add to [tool.mypy] packages: {', '.join(unchecked)}"


@pytest.mark.slow
def test_mypy_passes_on_the_nasvit_namespace() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, (
        f"`python -m mypy` failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
    )
