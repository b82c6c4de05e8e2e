"""Cache-state-aware entries: weight bytes and cold-cache timings per block; the residency model
fitted by a validation run and its held-out figures.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ENTRY_COLUMNS: tuple[tuple[str, sa.types.TypeEngine[Any]], ...] = (
    ("weight_bytes", sa.BigInteger()),
    ("cold_median_ms", sa.Float()),
    ("cold_iqr_ms", sa.Float()),
    ("cold_n", sa.Integer()),
)
_RUN_COLUMNS: tuple[tuple[str, sa.types.TypeEngine[Any]], ...] = (
    ("cache_model", sa.JSON()),
    ("cache_test_mape", sa.Float()),
    ("cache_test_within_5", sa.Float()),
    ("cache_test_within_10", sa.Float()),
    ("cache_test_spearman", sa.Float()),
)


def upgrade() -> None:
    with op.batch_alter_table("latency_entries") as batch:
        for name, kind in _ENTRY_COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=True))
    with op.batch_alter_table("latency_validation_runs") as batch:
        for name, kind in _RUN_COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("latency_validation_runs") as batch:
        for name, _ in reversed(_RUN_COLUMNS):
            batch.drop_column(name)
    with op.batch_alter_table("latency_entries") as batch:
        for name, _ in reversed(_ENTRY_COLUMNS):
            batch.drop_column(name)
