"""Fixtures: a store per backend (SQLite file, real PostgreSQL server), small real blocks.

PostgreSQL: the Debian ``postgresql`` package is installed if missing (needs root and apt), and
a throwaway cluster is started on 127.0.0.1 with initdb/pg_ctl as the ``postgres`` user. The
PostgreSQL tests skip, saying why, only if that is impossible.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nasvit.latency_db import LatencyStore, MeasurementProtocol, OnnxRuntimeProfiler

PG_ROOT = Path("/usr/lib/postgresql")


def _pg_bin() -> Path | None:
    versions = sorted(PG_ROOT.glob("*/bin/pg_ctl")) if PG_ROOT.is_dir() else []
    return versions[-1].parent if versions else None


def _install_postgresql() -> str | None:
    """Install the Debian package; returns why not, or None on success."""
    if shutil.which("apt-get") is None:
        return "apt-get not available to install postgresql"
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    install = ["apt-get", "install", "-y", "-q", "postgresql"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        result = subprocess.run(install, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            return f"apt-get install postgresql failed: {result.stderr.strip()[-200:]}"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL server for this test session."""
    if _pg_bin() is None:
        reason = _install_postgresql()
        if reason or _pg_bin() is None:
            pytest.skip(f"PostgreSQL unavailable: {reason or 'no pg_ctl after install'}")
    bin_dir = _pg_bin()
    assert bin_dir is not None
    data = Path(tempfile.mkdtemp(prefix="nasvit-pg-"))
    port = _free_port()
    shutil.chown(data, "postgres", "postgres")

    def as_postgres(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["runuser", "-u", "postgres", "--", *args], capture_output=True, text=True
        )

    init = as_postgres(
        str(bin_dir / "initdb"), "-D", str(data / "db"), "-U", "postgres", "-A", "trust"
    )
    if init.returncode != 0:
        pytest.skip(f"initdb failed: {init.stderr.strip()[-200:]}")
    options = f"-h 127.0.0.1 -p {port} -k {data}"
    start = as_postgres(
        str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-o", options, "-w",
        "-l", str(data / "log"), "start",
    )  # fmt: skip
    if start.returncode != 0:
        pytest.skip(f"pg_ctl start failed: {start.stderr.strip()[-200:]}")
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "stop")
        shutil.rmtree(data, ignore_errors=True)


def _fresh_postgres_db(url: str) -> str:
    """A new empty database on the session's server, so tests never see each other's rows."""
    from sqlalchemy import create_engine, text

    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each backend (the conformance suite runs on both)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'nasvit.db'}"
    return _fresh_postgres_db(request.getfixturevalue("postgres_url"))


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
def space():  # noqa: ANN201 - a SearchSpace
    from nasvit.search_spaces import get_space

    return get_space("efficientformer")


@pytest.fixture(scope="session")
def small_blocks(space):  # noqa: ANN001, ANN201
    """A handful of distinct real blocks at resolution 32, of every kind."""
    blocks = space.enumerate_blocks([32])
    by_kind: dict[str, list] = {}
    for block in blocks:
        by_kind.setdefault(block.kind, []).append(block)
    return [b for kind in sorted(by_kind) for b in by_kind[kind][:2]]
