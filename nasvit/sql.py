"""SQL plumbing shared by the latency store, the trial store and the job service: engines, the
locks that serialise processes sharing one database, and the Alembic environment.

SQLite: every connection runs in WAL mode (readers never block the writer) with a 60 s busy
timeout and foreign keys on. Writers take the write lock up front (``BEGIN IMMEDIATE``): a
deferred transaction that reads then writes fails at once with SQLITE_BUSY when another process
wrote in between, while an immediate one waits. Readers may use plain deferred transactions.
PostgreSQL needs neither trick; processes there serialise on advisory locks, whose keys are the
values of :class:`DatabaseLock` (one per purpose, all distinct: a test checks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime, timezone
from enum import Enum, unique
from pathlib import Path
from typing import Any, overload

from sqlalchemy import Connection, Engine, MetaData, create_engine, event, text

#: Seconds a SQLite connection waits for another process's write lock before giving up.
SQLITE_BUSY_TIMEOUT_S = 60


@unique  # two purposes sharing a key would silently wait for each other (or not lock at all)
class DatabaseLock(Enum):
    """What processes sharing one database serialise on. The value is the PostgreSQL
    advisory-lock key: any 64-bit number, distinct for every member."""

    #: Applying the latency store's migrations (two processes opening a fresh database).
    LATENCY_MIGRATIONS = 7291001
    #: Applying the job service's migrations (the server and workers starting at once).
    SERVICE_MIGRATIONS = 7291002
    #: Creating Optuna's tables for the trial store (workers starting on a fresh database).
    TRIAL_SCHEMA = 7291003


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@overload
def aware(moment: datetime) -> datetime: ...
@overload
def aware(moment: None) -> None: ...
def aware(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC. None stays None."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=timezone.utc)


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(url: str, *, immediate: bool = True, pool_size: int | None = None) -> Engine:
    """An engine for ``url`` configured as the module docstring says.

    Args:
        url: SQLAlchemy URL (SQLite or PostgreSQL).
        immediate: SQLite: begin every transaction with ``BEGIN IMMEDIATE`` (a writer's
            engine); False gives plain deferred transactions (a reader's engine).
        pool_size: connections kept open (and as many again on demand on PostgreSQL); None
            keeps SQLAlchemy's default. Services with many request threads raise it.
    """
    pool: dict[str, Any] = {} if pool_size is None else {"pool_size": pool_size}
    if not is_sqlite(url):
        if pool_size is not None:
            pool["max_overflow"] = pool_size
        return create_engine(url, pool_pre_ping=True, **pool)
    engine = create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
        **pool,
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from pysqlite so that the BEGIN below is ours.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def lock_in_transaction(connection: Connection, lock: DatabaseLock) -> None:
    """Hold ``lock`` until the connection's transaction ends. PostgreSQL only: on SQLite a
    writer's ``BEGIN IMMEDIATE`` already serialises the whole transaction."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock.value})


@contextlib.contextmanager
def lock_across_processes(url: str, lock: DatabaseLock) -> Iterator[None]:
    """Hold ``lock`` for the ``with`` block, for work done through connections this module does
    not own (e.g. Optuna's storage, which creates its own engine).

    PostgreSQL: a session advisory lock on a connection of its own. SQLite: a file lock next to
    the database file (an in-memory database is private to its process: no lock).
    """
    if is_sqlite(url):
        from filelock import FileLock

        database = url.split("///", 1)[-1]
        if database in ("", ":memory:"):
            yield
            return
        with FileLock(f"{database}.{lock.name.lower()}.lock"):
            yield
        return
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": lock.value})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": lock.value})
    finally:
        engine.dispose()


def upgrade(engine: Engine, migrations: Path) -> None:
    """Apply the Alembic migrations in the ``migrations`` folder up to head.

    One transaction around the whole upgrade, begun before Alembic sees the connection: on
    SQLite, whose DDL Alembic treats as non-transactional, it otherwise commits after each
    migration, so a second process opening a fresh database could apply a migration between two
    of ours that we had already planned ("duplicate column name"). Begun here, the write lock
    (``BEGIN IMMEDIATE``; the advisory lock that :func:`run_migrations` takes on PostgreSQL) is
    held from reading the version to the last migration.
    """
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def run_migrations(metadata: MetaData, version_table: str, lock: DatabaseLock) -> None:
    """The body of a ``migrations/env.py``: run the migrations on the connection that
    :func:`upgrade` passes in ``config.attributes["connection"]``, else (the ``alembic``
    command line) on a fresh connection to the ``sqlalchemy.url`` option.

    Args:
        metadata: the ORM models the migrations describe (for autogenerate).
        version_table: Alembic's version table of this schema; each schema has its own, so
            several can share one database and move on independently.
        lock: serialises processes migrating the same PostgreSQL database at once: the second
            waits, then finds the version table the first wrote.
    """
    from alembic import context

    def run(connection: Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            version_table=version_table,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            lock_in_transaction(connection, lock)
            context.run_migrations()

    given = context.config.attributes.get("connection")
    if given is not None:
        run(given)
        return
    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as fresh:
        run(fresh)
