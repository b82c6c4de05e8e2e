"""Alembic environment for the service's tables (jobs, API tokens); run by
:meth:`nasvit.server.db.Database.upgrade` (see :func:`nasvit.sql.run_migrations`)."""

from __future__ import annotations

from nasvit.server.db import VERSION_TABLE, Base
from nasvit.sql import DatabaseLock, run_migrations

run_migrations(Base.metadata, VERSION_TABLE, DatabaseLock.SERVICE_MIGRATIONS)
