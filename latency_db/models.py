"""SQLAlchemy ORM models of the latency database (schema changes go through Alembic migrations
in ``migrations/``; keep both in step — a test compares them).

The entry table's value columns come from the entry's one declaration,
:data:`nasvit.latency_db.records.ENTRY_VALUES` (migrations 0001-0003 created the same columns).
"""

from __future__ import annotations

from dataclasses import MISSING
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

from nasvit.latency_db.records import ENTRY_VALUES, EntryValue
from nasvit.sql import utcnow


class Base(DeclarativeBase):
    pass


class Device(Base):
    """A hardware + runtime configuration; ``id`` is the fingerprint hash."""

    __tablename__ = "latency_devices"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    fingerprint: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Per-call cost of an empty model; a sum of N blocks pays it N times, a network once.
    overhead_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    overhead_iqr_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    overhead_n: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Migration 0004: set once an agent registered the device; from then on every measurement
    # for it goes through work items (see nasvit.latency_db.work).
    agent_registered_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_agent: Mapped[str | None] = mapped_column(String(255), nullable=True)


def _entry_column(value: EntryValue) -> Column[Any]:
    """The ``latency_entries`` column of an entry value."""
    sql_type: TypeEngine[Any]
    if value.type is str:
        sql_type = Text() if value.spec.length is None else String(value.spec.length)
    elif value.type is int:
        sql_type = BigInteger() if value.spec.big else Integer()
    elif value.type is float:
        sql_type = Float()
    elif value.type is datetime:
        sql_type = DateTime(timezone=True)
    else:  # pragma: no cover - a new kind of value needs its column type here
        raise TypeError(f"entry value {value.name}: no column type for {value.type}")
    # Python-side defaults, as NewEntry's: a time left unset is now (the store's rule too).
    default = utcnow if value.type is datetime else value.default
    return Column(
        value.name,
        sql_type,
        nullable=not value.required,
        default=None if default is MISSING else default,
    )


class LatencyEntry(Base):
    """One block's latency on one device; at most one row per (device, key). Its value columns
    are derived from the entry's one declaration (:data:`~nasvit.latency_db.records.ENTRY_VALUES`):
    query them through ``LatencyEntry.__table__.c``."""

    __table__ = Table(
        "latency_entries",
        Base.metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column(
            "device_id",
            String(32),
            ForeignKey("latency_devices.id", ondelete="CASCADE"),
            index=True,
            nullable=False,
        ),
        *(_entry_column(value) for value in ENTRY_VALUES),
        UniqueConstraint("device_id", "key", name="uq_latency_entries_device_key"),
    )


class ValidationRun(Base):
    """Whole-network measurements compared with the table's predictions."""

    __tablename__ = "latency_validation_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("latency_devices.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    space: Mapped[str] = mapped_column(String(200))
    key_schema: Mapped[str] = mapped_column(String(64))
    n: Mapped[int] = mapped_column(Integer)
    mape: Mapped[float] = mapped_column(Float)
    within_5: Mapped[float] = mapped_column(Float)
    within_10: Mapped[float] = mapped_column(Float)
    spearman: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Linear calibration fitted on n_fit networks; calibrated figures on the n_test others.
    slope: Mapped[float | None] = mapped_column(Float, nullable=True)
    intercept: Mapped[float | None] = mapped_column(Float, nullable=True)
    n_fit: Mapped[int] = mapped_column(Integer, default=0)
    n_test: Mapped[int] = mapped_column(Integer, default=0)
    raw_test_mape: Mapped[float | None] = mapped_column(Float, nullable=True)
    raw_test_within_5: Mapped[float | None] = mapped_column(Float, nullable=True)
    raw_test_within_10: Mapped[float | None] = mapped_column(Float, nullable=True)
    calibrated_mape: Mapped[float | None] = mapped_column(Float, nullable=True)
    calibrated_within_5: Mapped[float | None] = mapped_column(Float, nullable=True)
    calibrated_within_10: Mapped[float | None] = mapped_column(Float, nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Migration 0002: the cache residency model fitted on this run (CacheModel.to_dict()) and
    # its held-out figures.
    cache_model: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    cache_test_mape: Mapped[float | None] = mapped_column(Float, nullable=True)
    cache_test_within_5: Mapped[float | None] = mapped_column(Float, nullable=True)
    cache_test_within_10: Mapped[float | None] = mapped_column(Float, nullable=True)
    cache_test_spearman: Mapped[float | None] = mapped_column(Float, nullable=True)


class WorkModelRow(Base):
    """An ONNX model a work item times, content-addressed; kept in the database so the server,
    the pipeline and the CLI share no filesystem. Deleted once no unfinished item needs it."""

    __tablename__ = "latency_work_models"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WorkItemRow(Base):
    """One timing a device's agent is to make (see :mod:`nasvit.latency_db.work`)."""

    __tablename__ = "latency_work_items"
    __table_args__ = (
        # Enqueueing the same block twice is a no-op (insert-or-ignore on this key).
        UniqueConstraint("device_id", "kind", "key", name="uq_latency_work_items_device_kind_key"),
        # The claim's query: a device's claimable items in (priority, id) order.
        Index("ix_latency_work_items_queue", "device_id", "status", "priority", "id"),
        # Every upload looks for models no unfinished item needs; a batch's items by batch.
        Index("ix_latency_work_items_model", "model_sha256"),
        Index("ix_latency_work_items_batch", "batch"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("latency_devices.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(String(512))
    batch: Mapped[str] = mapped_column(String(64))
    space: Mapped[str | None] = mapped_column(String(200), nullable=True)
    model_sha256: Mapped[str] = mapped_column(String(64))
    extra_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reference_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    input_shape: Mapped[list[int]] = mapped_column(JSON)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    priority: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    lease_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    leased_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
