"""Alembic environment for the latency database (run by :func:`nasvit.sql.upgrade`; see
:func:`nasvit.sql.run_migrations`)."""

from __future__ import annotations

from nasvit.latency_db.models import Base
from nasvit.sql import DatabaseLock, run_migrations

# Our own version table, so the latency schema can share a database with other components.
VERSION_TABLE = "alembic_version_latency_db"

run_migrations(Base.metadata, VERSION_TABLE, DatabaseLock.LATENCY_MIGRATIONS)
