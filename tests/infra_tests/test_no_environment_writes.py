"""Settings travel as one object (nasvit.settings.Settings): no source module writes the
process environment, which would leak one caller's settings into everything else it runs."""

from __future__ import annotations

import ast

import pytest

from nasvit_testing.layout import source_files

_WRITING_METHODS = {"update", "setdefault", "pop", "clear", "__setitem__"}


def environment_writes(source: str) -> list[int]:
    """Lines of ``source`` that write ``os.environ`` or call ``os.putenv``/``os.unsetenv``."""

    def is_environ(node: ast.AST) -> bool:
        return (
            isinstance(node, ast.Attribute)
            and node.attr == "environ"
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
        )

    lines = []
    for node in ast.walk(ast.parse(source)):
        targets: list[ast.AST] = []
        if isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = list(node.targets) if isinstance(node, ast.Assign) else [node.target]
        elif isinstance(node, ast.Delete):
            targets = list(node.targets)
        if any(isinstance(t, ast.Subscript) and is_environ(t.value) for t in targets):
            lines.append(node.lineno)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            function = node.func
            if is_environ(function.value) and function.attr in _WRITING_METHODS:
                lines.append(node.lineno)
            if (
                function.attr in {"putenv", "unsetenv"}
                and isinstance(function.value, ast.Name)
                and function.value.id == "os"
            ):
                lines.append(node.lineno)
    return lines


def test_no_source_module_writes_the_environment() -> None:
    files = [source for source in source_files() if source.path.suffix == ".py"]
    assert files, "scan found no sources"
    found = [
        f"{source.path}:{line}"
        for source in files
        for line in environment_writes(source.path.read_text(encoding="utf-8"))
    ]
    assert not found, "os.environ written (pass a Settings object instead):\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import os\nos.environ['NASVIT_HOME'] = '/x'\n", [2]),
        ("import os\nos.environ.update(A='1')\n", [2]),
        ("import os\nos.environ.setdefault('A', '1')\n", [2]),
        ("import os\ndel os.environ['A']\n", [2]),
        ("import os\nos.putenv('A', '1')\n", [2]),
        ("import os\nvalue = os.environ.get('A')\nenv = dict(os.environ)\nenv['A'] = '1'\n", []),
    ],
)
def test_the_scan_finds_exactly_the_writes(source: str, expected: list[int]) -> None:
    assert environment_writes(source) == expected
