"""The repository's source layout as the packaging sees it.

Folder names are fixed by the product brief while import names live under one namespace, so
module names are derived here from ``[tool.setuptools.package-dir]`` in pyproject.toml, the same
mapping setuptools uses; nothing in the tests repeats it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Non-Python files that must ship in the wheel (so must everything under a ``static/`` folder);
#: keep in step with [tool.setuptools.package-data] in pyproject.toml.
DATA_SUFFIXES = frozenset({".ini", ".sql", ".mako", ".html", ".js", ".css", ".json", ".typed"})

_SKIPPED_DIRS = frozenset({"__pycache__"})


@dataclass(frozen=True)
class SourceFile:
    """One file under a mapped package folder.

    Attributes:
        path: the file in the checkout.
        wheel_path: where the file lands in an installed wheel, e.g. ``nasvit/server/app.py``.
        module: dotted module name for a ``.py`` file (a package for ``__init__.py``), else None.
    """

    path: Path
    wheel_path: str
    module: str | None

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"


@cache
def pyproject() -> dict[str, Any]:
    with (REPO_ROOT / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)


def package_dirs() -> dict[str, Path]:
    """Import name -> folder, for every mapped root (``nasvit.server`` -> ``<repo>/server``)."""
    mapping = pyproject()["tool"]["setuptools"]["package-dir"]
    return {name: (REPO_ROOT / folder).resolve() for name, folder in mapping.items()}


def listed_packages() -> list[str]:
    return list(pyproject()["tool"]["setuptools"]["packages"])


def is_shipped(relative: PurePosixPath) -> bool:
    """Whether a file (relative to its mapped root) belongs in the wheel."""
    return (
        relative.suffix == ".py" or relative.suffix in DATA_SUFFIXES or "static" in relative.parts
    )


def module_name(wheel_path: str) -> str:
    """``nasvit/nn/blocks.py`` -> ``nasvit.nn.blocks``; ``nasvit/server/__init__.py`` ->
    ``nasvit.server``."""
    parts = list(PurePosixPath(wheel_path).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> list[SourceFile]:
    """Every shipped file under the mapped folders, with its installed path and module name."""
    roots = package_dirs()
    root_paths = set(roots.values())
    found: list[SourceFile] = []
    for package, root in sorted(roots.items()):
        if not root.is_dir():
            continue
        prefix = PurePosixPath(*package.split("."))
        for path in sorted(root.rglob("*")):
            relative = PurePosixPath(path.relative_to(root).as_posix())
            if not path.is_file() or _SKIPPED_DIRS.intersection(relative.parts):
                continue
            # A folder mapped to another import name is walked under that name.
            folders_between = list(path.parents)[: len(relative.parts) - 1]
            if root_paths.intersection(folders_between):
                continue
            if not is_shipped(relative):
                continue
            wheel_path = str(prefix / relative)
            module = module_name(wheel_path) if relative.suffix == ".py" else None
            found.append(SourceFile(path=path, wheel_path=wheel_path, module=module))
    return found
