"""Devices, latency entries and validation runs.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "latency_devices",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("fingerprint", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("overhead_ms", sa.Float(), nullable=True),
        sa.Column("overhead_iqr_ms", sa.Float(), nullable=True),
        sa.Column("overhead_n", sa.Integer(), nullable=True),
    )
    op.create_table(
        "latency_entries",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "device_id",
            sa.String(32),
            sa.ForeignKey("latency_devices.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("key_schema", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(200), nullable=False),
        sa.Column("median_ms", sa.Float(), nullable=False),
        sa.Column("iqr_ms", sa.Float(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("profiler", sa.String(64), nullable=False),
        sa.Column("runtime_version", sa.String(64), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("measured_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("device_id", "key", name="uq_latency_entries_device_key"),
    )
    op.create_index("ix_latency_entries_device_id", "latency_entries", ["device_id"])
    op.create_table(
        "latency_validation_runs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "device_id",
            sa.String(32),
            sa.ForeignKey("latency_devices.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("space", sa.String(200), nullable=False),
        sa.Column("key_schema", sa.String(64), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("mape", sa.Float(), nullable=False),
        sa.Column("within_5", sa.Float(), nullable=False),
        sa.Column("within_10", sa.Float(), nullable=False),
        sa.Column("spearman", sa.Float(), nullable=True),
        sa.Column("slope", sa.Float(), nullable=True),
        sa.Column("intercept", sa.Float(), nullable=True),
        sa.Column("n_fit", sa.Integer(), nullable=False),
        sa.Column("n_test", sa.Integer(), nullable=False),
        sa.Column("raw_test_mape", sa.Float(), nullable=True),
        sa.Column("raw_test_within_5", sa.Float(), nullable=True),
        sa.Column("raw_test_within_10", sa.Float(), nullable=True),
        sa.Column("calibrated_mape", sa.Float(), nullable=True),
        sa.Column("calibrated_within_5", sa.Float(), nullable=True),
        sa.Column("calibrated_within_10", sa.Float(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
    )
    op.create_index(
        "ix_latency_validation_runs_device_id", "latency_validation_runs", ["device_id"]
    )


def downgrade() -> None:
    op.drop_table("latency_validation_runs")
    op.drop_table("latency_entries")
    op.drop_table("latency_devices")
