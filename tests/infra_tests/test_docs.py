"""The documentation: the mkdocs site builds in strict mode, and the README stays a short
user-facing page (history goes in CHANGELOG.md and commit messages, figures in
docs/benchmarks.md with their date, commit and command)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nasvit_testing.layout import REPO_ROOT

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
#: The README is an overview that links to the docs site; past this it is growing a manual.
README_MAX_LINES = 200
#: Phrases of a lab notebook, not of user documentation.
NARRATIVE_MARKERS = ("this session", "previous session", "last session", "colleague")


def _mkdocs() -> Path:
    # The script beside this interpreter: `python -m mkdocs` from the repository root would put
    # the root on sys.path, where the folders import as top-level `server`, `search_spaces`.
    return Path(sys.executable).with_name("mkdocs")


@pytest.mark.slow
def test_the_docs_site_builds_in_strict_mode(tmp_path: Path) -> None:
    mkdocs = _mkdocs()
    assert mkdocs.exists(), f"{mkdocs} not found: install the dev extra (pip install -e '.[dev]')"
    result = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=600,
    )
    assert result.returncode == 0, (
        f"`mkdocs build --strict` failed (exit {result.returncode}); "
        f"run `.venv/bin/mkdocs build --strict` to see it:\n{result.stdout}{result.stderr}"
    )
    # The API reference is generated from the code: an empty page would pass the build.
    api_page = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert 'id="nasvit.api.search"' in api_page, "the API reference lost nasvit.api.search"
    spaces_page = (tmp_path / "site" / "reference" / "search_spaces" / "index.html").read_text()
    assert 'id="nasvit.search_spaces.core.SearchSpace"' in spaces_page, (
        "the reference lost the folders mapped onto nasvit (docs/_ext/package_dir.py)"
    )


def test_the_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move details to docs/"
    )


def _documentation_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def test_the_documentation_reads_as_documentation_not_a_notebook() -> None:
    pattern = re.compile("|".join(re.escape(marker) for marker in NARRATIVE_MARKERS), re.I)
    found = [
        f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}"
        for path in _documentation_files()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if pattern.search(line)
    ]
    assert not found, (
        "say what is true now; history belongs in CHANGELOG.md and commit messages:\n"
        + "\n".join(found)
    )
