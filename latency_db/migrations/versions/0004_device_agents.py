"""Device agents: which devices an agent registered (and when it was last seen), the work items
their agents claim, and the models those items time.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("latency_devices") as batch:
        batch.add_column(
            sa.Column("agent_registered_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch.add_column(sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("last_agent", sa.String(255), nullable=True))
    op.create_table(
        "latency_work_models",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "latency_work_items",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "device_id",
            sa.String(32),
            sa.ForeignKey("latency_devices.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("key", sa.String(512), nullable=False),
        sa.Column("batch", sa.String(64), nullable=False),
        sa.Column("space", sa.String(200), nullable=True),
        sa.Column("model_sha256", sa.String(64), nullable=False),
        sa.Column("extra_sha256", sa.String(64), nullable=True),
        sa.Column("reference_sha256", sa.String(64), nullable=True),
        sa.Column("input_shape", sa.JSON(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("lease_id", sa.String(32), nullable=True),
        sa.Column("leased_by", sa.String(255), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint(
            "device_id", "kind", "key", name="uq_latency_work_items_device_kind_key"
        ),
    )
    op.create_index("ix_latency_work_items_device_id", "latency_work_items", ["device_id"])
    op.create_index(
        "ix_latency_work_items_queue",
        "latency_work_items",
        ["device_id", "status", "priority", "id"],
    )
    op.create_index("ix_latency_work_items_model", "latency_work_items", ["model_sha256"])
    op.create_index("ix_latency_work_items_batch", "latency_work_items", ["batch"])


def downgrade() -> None:
    op.drop_table("latency_work_items")
    op.drop_table("latency_work_models")
    with op.batch_alter_table("latency_devices") as batch:
        batch.drop_column("last_agent")
        batch.drop_column("last_seen_at")
        batch.drop_column("agent_registered_at")
