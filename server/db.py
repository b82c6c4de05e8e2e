"""The service's tables (jobs, API tokens, device tokens) and its connection to the database.

The tables share a database with the latency store but have their own Alembic environment
(``server/migrations``, version table ``nasvit_server_alembic_version``), so either schema can
move on without the other.

SQLite: readers use plain deferred transactions (WAL lets them run beside a writer); writers
take the write lock up front (``BEGIN IMMEDIATE``), so a read-then-write claim is atomic and
waits instead of failing with SQLITE_BUSY (see :mod:`nasvit.sql`). PostgreSQL needs neither.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from nasvit.sql import is_sqlite, make_engine, upgrade

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSION_TABLE = "nasvit_server_alembic_version"
#: Connections per engine: handlers run in FastAPI's thread pool, each with its own session.
POOL_SIZE = 20


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    best: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # Incremented by every claim: a worker's writes carry (worker, attempt), so a worker that
    # lost its lease can never overwrite the state its successor writes.
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    lease_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_jobs_status_created", "status", "created_at"),)


class TokenRow(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class DeviceTokenRow(Base):
    """A device token: lets an agent register one device and act for it, nothing else.

    ``name`` labels the token (for listing and revoking); ``device`` is the device name the token
    acts for, which need not exist yet (the agent's registration creates it)."""

    __tablename__ = "device_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    device: Mapped[str] = mapped_column(String(200), index=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Database:
    """Engines and sessions for the service tables; :meth:`open` migrates to head."""

    def __init__(self, url: str):
        self.url = url
        self.write_engine = make_engine(url, immediate=True, pool_size=POOL_SIZE)
        # SQLite readers need an engine of their own (deferred transactions); elsewhere one is
        # enough.
        self.read_engine = (
            make_engine(url, immediate=False, pool_size=POOL_SIZE)
            if is_sqlite(url)
            else self.write_engine
        )
        self._reads = sessionmaker(self.read_engine, expire_on_commit=False)
        self._writes = sessionmaker(self.write_engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.write_engine.dialect.name

    @classmethod
    def open(cls, url: str) -> Database:
        database = cls(url)
        database.upgrade()
        return database

    def upgrade(self) -> None:
        """Apply the service's packaged migrations up to head."""
        upgrade(self.write_engine, MIGRATIONS_DIR)

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._reads() as session, session.begin():
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session committed on success and rolled back on any error."""
        with self._writes() as session, session.begin():
            yield session

    def close(self) -> None:
        self.read_engine.dispose()
        self.write_engine.dispose()
