"""Alembic environment for the latency database.

Run programmatically by :func:`nasvit.latency_db.store.upgrade`, which passes an open connection
in ``config.attributes["connection"]``; the ``sqlalchemy.url`` option is the fallback for the
alembic command line.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text

from nasvit.latency_db.models import Base

config = context.config
target_metadata = Base.metadata
# Our own version table, so the latency schema can share a database with other components.
VERSION_TABLE = "alembic_version_latency_db"


def _run(connection) -> None:  # noqa: ANN001 - alembic passes a Connection
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Two processes opening a fresh database at once: the second waits here, then sees
            # the version table the first created. (SQLite gets the same from BEGIN IMMEDIATE.)
            connection.execute(text("SELECT pg_advisory_xact_lock(7291001)"))
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as fresh:
        _run(fresh)
