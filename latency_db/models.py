"""SQLAlchemy ORM models of the latency database (schema changes go through Alembic migrations
in ``migrations/``; keep both in step — a test compares them)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


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


class LatencyEntry(Base):
    """One block's latency on one device; at most one row per (device, key)."""

    __tablename__ = "latency_entries"
    __table_args__ = (UniqueConstraint("device_id", "key", name="uq_latency_entries_device_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("latency_devices.id", ondelete="CASCADE"), index=True
    )
    key: Mapped[str] = mapped_column(Text)
    key_schema: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(200))
    median_ms: Mapped[float] = mapped_column(Float)
    iqr_ms: Mapped[float] = mapped_column(Float)
    n: Mapped[int] = mapped_column(Integer)
    profiler: Mapped[str] = mapped_column(String(64))
    runtime_version: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(32), default="measured")  # or "imported"
    measured_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Migration 0002: the block's weight bytes and its cold-cache timing (see cache.py); None
    # for entries measured before, or blocks too small to need a cold timing.
    weight_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cold_median_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    cold_iqr_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    cold_n: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Migration 0003: which cold protocol measured the cold timing (replicate.COLD_PROTOCOL).
    cold_protocol: Mapped[str | None] = mapped_column(String(32), nullable=True)


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
