"""The cold-timing protocol of each entry, so timings from an older protocol are re-measured.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("latency_entries") as batch:
        batch.add_column(sa.Column("cold_protocol", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("latency_entries") as batch:
        batch.drop_column("cold_protocol")
