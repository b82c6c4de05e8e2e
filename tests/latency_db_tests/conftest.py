"""Fixtures: a store per backend (SQLite file, a real PostgreSQL server from the
nasvit_testing.postgres plugin), small real blocks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nasvit.latency_db import LatencyStore, MeasurementProtocol, OnnxRuntimeProfiler

from nasvit_testing.postgres import fresh_postgres_db


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each backend (the conformance suite runs on both)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'nasvit.db'}"
    return fresh_postgres_db(request.getfixturevalue("postgres_url"))


@pytest.fixture
def store(database_url: str) -> Iterator[LatencyStore]:
    opened = LatencyStore.open(database_url)
    yield opened
    opened.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[LatencyStore]:
    opened = LatencyStore.open(f"sqlite:///{tmp_path / 'nasvit.db'}")
    yield opened
    opened.close()


@pytest.fixture(scope="session")
def quick_profiler() -> OnnxRuntimeProfiler:
    return OnnxRuntimeProfiler(threads=1, protocol=MeasurementProtocol.quick())


@pytest.fixture(scope="session")
def space():
    from nasvit.search_spaces import get_space

    return get_space("efficientformer")


@pytest.fixture(scope="session")
def small_blocks(space):
    """A handful of distinct real blocks at resolution 32, of every kind."""
    blocks = space.enumerate_blocks([32])
    by_kind: dict[str, list] = {}
    for block in blocks:
        by_kind.setdefault(block.kind, []).append(block)
    return [b for kind in sorted(by_kind) for b in by_kind[kind][:2]]
