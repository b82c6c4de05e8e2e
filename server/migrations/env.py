"""Alembic environment for the service's tables (jobs, API tokens).

Run programmatically by :meth:`nasvit.server.db.Database.upgrade`, which passes an open
connection in ``config.attributes["connection"]``; the ``sqlalchemy.url`` option is the fallback
for the alembic command line.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text

from nasvit.server.db import VERSION_TABLE, Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:  # noqa: ANN001 - alembic passes a Connection
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # The server and several workers may start on a fresh database at once: the others
            # wait here, then find the schema in place. (SQLite: BEGIN IMMEDIATE serialises.)
            connection.execute(text("SELECT pg_advisory_xact_lock(7291002)"))
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as fresh:
        _run(fresh)
