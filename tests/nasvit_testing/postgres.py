"""Plugin: a real PostgreSQL server for the test session, and fresh databases on it.

The Debian ``postgresql`` package is installed if missing (needs root and apt), and a throwaway
cluster is started on 127.0.0.1 with initdb/pg_ctl as the ``postgres`` user. If that is
impossible the tests that need it skip, saying why, or fail in CI (see ``unavailable``).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nasvit_testing.apt import apt_install
from nasvit_testing.availability import unavailable
from nasvit_testing.ports import free_port

PG_ROOT = Path("/usr/lib/postgresql")


def _pg_bin() -> Path | None:
    versions = sorted(PG_ROOT.glob("*/bin/pg_ctl")) if PG_ROOT.is_dir() else []
    return versions[-1].parent if versions else None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL server for this test session."""
    if _pg_bin() is None:
        reason = apt_install("postgresql")
        if reason or _pg_bin() is None:
            unavailable(f"PostgreSQL unavailable: {reason or 'no pg_ctl after install'}")
    bin_dir = _pg_bin()
    assert bin_dir is not None
    data = Path(tempfile.mkdtemp(prefix="nasvit-pg-"))
    port = free_port()
    shutil.chown(data, "postgres", "postgres")

    def as_postgres(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["runuser", "-u", "postgres", "--", *args], capture_output=True, text=True
        )

    init = as_postgres(
        str(bin_dir / "initdb"), "-D", str(data / "db"), "-U", "postgres", "-A", "trust"
    )
    if init.returncode != 0:
        unavailable(f"PostgreSQL unavailable: initdb failed: {init.stderr.strip()[-200:]}")
    options = f"-h 127.0.0.1 -p {port} -k {data}"
    start = as_postgres(
        str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-o", options, "-w",
        "-l", str(data / "log"), "start",
    )  # fmt: skip
    if start.returncode != 0:
        unavailable(f"PostgreSQL unavailable: pg_ctl start failed: {start.stderr.strip()[-200:]}")
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "stop")
        shutil.rmtree(data, ignore_errors=True)


def fresh_postgres_db(url: str) -> str:
    """A new empty database on the session's server, so tests never see each other's rows.

    Args:
        url: the server's URL, as ``postgres_url`` gives it.

    Returns:
        The URL of the new database.
    """
    from sqlalchemy import create_engine, text

    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return url.rsplit("/", 1)[0] + f"/{name}"
