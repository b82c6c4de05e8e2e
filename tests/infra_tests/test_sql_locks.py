"""Locks between processes sharing a database are named in one place,
:class:`nasvit.sql.DatabaseLock`.

The service's migrations and the trial store once both took PostgreSQL advisory lock 7291002,
each module with its own literal: unrelated work waited for each other, and a session lock held
while migrating could have been taken for granted by the other. Every key is now a member of
``DatabaseLock``; these tests keep the keys distinct and keep lock keys out of other modules.
"""

from __future__ import annotations

import ast
import re

from nasvit.sql import DatabaseLock

from nasvit_testing.layout import SourceFile, source_files

SQL_MODULE = "nasvit.sql"
#: An advisory-lock call whose key is written in the SQL text, not bound from a DatabaseLock.
_LITERAL_KEY = re.compile(r"pg_(?:try_)?advisory_\w*lock\w*\s*\(\s*-?\d", re.IGNORECASE)
#: Smaller constants named "...lock..." are timeouts and counts; lock keys are big numbers.
_SMALLEST_KEY = 2**20


def _python_sources() -> list[SourceFile]:
    files = [source for source in source_files() if source.module is not None]
    assert any(source.module == SQL_MODULE for source in files), "scan found no sources"
    return files


def test_every_lock_has_its_own_key() -> None:
    # An Enum member whose value repeats another's is silently an alias of it: count names.
    keys = [member.value for member in DatabaseLock.__members__.values()]
    assert len(set(keys)) == len(keys), f"two locks share a key: {DatabaseLock.__members__}"
    assert all(isinstance(key, int) and -(2**63) <= key < 2**63 for key in keys)  # bigint


def test_no_module_but_nasvit_sql_takes_an_advisory_lock() -> None:
    offenders = []
    for source in _python_sources():
        text = source.path.read_text(encoding="utf-8")
        if _LITERAL_KEY.search(text):
            offenders.append(f"{source.wheel_path}: an advisory lock with a literal key")
        elif source.module != SQL_MODULE and "pg_advisory" in text.lower():
            offenders.append(f"{source.wheel_path}: takes an advisory lock itself")
    assert offenders == [], "use nasvit.sql's DatabaseLock and helpers:\n" + "\n".join(offenders)


def test_no_module_defines_its_own_lock_key() -> None:
    offenders = []
    for source in _python_sources():
        if source.module == SQL_MODULE:
            continue
        tree = ast.parse(source.path.read_text(encoding="utf-8"), filename=str(source.path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                targets, value = [node.target], node.value
            else:
                continue
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            big_number = (
                isinstance(value, ast.Constant)
                and isinstance(value.value, int)
                and abs(value.value) >= _SMALLEST_KEY
            )
            if big_number and any("lock" in name.lower() for name in names):
                offenders.append(f"{source.wheel_path}:{node.lineno}: {', '.join(names)}")
    assert offenders == [], "lock keys belong in nasvit.sql.DatabaseLock:\n" + "\n".join(offenders)


def _lock_users() -> dict[str, set[str]]:
    """Lock name -> the modules that name it (``DatabaseLock.NAME``)."""
    users: dict[str, set[str]] = {name: set() for name in DatabaseLock.__members__}
    for source in _python_sources():
        if source.module == SQL_MODULE:
            continue
        tree = ast.parse(source.path.read_text(encoding="utf-8"), filename=str(source.path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "DatabaseLock"
                and node.attr in users
            ):
                assert source.module is not None
                users[node.attr].add(source.module)
    return users


def test_each_lock_serves_one_module() -> None:
    """Two modules on one lock is how the collision happened: a lock per purpose, each purpose
    in one module (a second user of a purpose should call that module instead)."""
    users = _lock_users()
    unused = [name for name, modules in users.items() if not modules]
    shared = {name: sorted(modules) for name, modules in users.items() if len(modules) > 1}
    assert unused == [], f"locks nothing takes (remove them): {unused}"
    assert shared == {}, f"locks taken by several modules: {shared}"
