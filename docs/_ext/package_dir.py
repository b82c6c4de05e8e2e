"""A griffe extension that makes mkdocstrings see the folders pyproject maps onto ``nasvit``.

pyproject's ``[tool.setuptools.package-dir]`` installs ``search_spaces/`` as
``nasvit.search_spaces``, ``latency_db/`` as ``nasvit.latency_db`` and ``server/`` as
``nasvit.server``. Griffe's static loader walks ``nasvit/`` on disk and never finds them, so
``::: nasvit.search_spaces`` would fail. While ``nasvit/__init__.py`` is being visited (before
the page's object is looked up), this extension visits each mapped folder and attaches it as a
submodule. The mapping is read from pyproject.toml, so nothing here repeats it.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import griffe

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parents[2]


class PackageDirMapping(griffe.Extension):
    """Attach every mapped package folder to its parent module while the parent is visited."""

    def __init__(self) -> None:
        with (REPO_ROOT / "pyproject.toml").open("rb") as handle:
            mapping = tomllib.load(handle)["tool"]["setuptools"]["package-dir"]
        self._mapped: dict[str, list[tuple[str, Path]]] = defaultdict(list)
        for import_name, folder in mapping.items():
            parent, _, name = import_name.rpartition(".")
            if parent:  # "nasvit" itself is found on disk
                self._mapped[parent].append((name, REPO_ROOT / folder))

    def on_module_members(
        self, *, node: ast.AST | griffe.ObjectNode, mod: griffe.Module, agent: Any, **kwargs: Any
    ) -> None:
        for name, folder in self._mapped.get(mod.path, ()):
            if name not in mod.members:
                mod.set_member(name, self._visit_package(name, folder, mod, agent))

    def _visit_package(
        self, name: str, folder: Path, parent: griffe.Module, agent: Any
    ) -> griffe.Module:
        package = self._visit(name, folder / "__init__.py", parent, agent)
        for path in sorted(folder.iterdir()):
            if path.suffix == ".py" and path.stem != "__init__":
                package.set_member(path.stem, self._visit(path.stem, path, package, agent))
            elif path.is_dir() and (path / "__init__.py").is_file():
                package.set_member(path.name, self._visit_package(path.name, path, package, agent))
        return package

    @staticmethod
    def _visit(name: str, path: Path, parent: griffe.Module, agent: Any) -> griffe.Module:
        code = path.read_text(encoding="utf-8-sig")
        agent.lines_collection[path] = code.splitlines(keepends=False)
        return griffe.visit(
            name,
            path,
            code,
            extensions=agent.extensions,
            parent=parent,
            docstring_parser=agent.docstring_parser,
            docstring_options=agent.docstring_options,
            lines_collection=agent.lines_collection,
            modules_collection=agent.modules_collection,
        )
