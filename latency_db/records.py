"""Plain records the store reads and writes (kept apart from the ORM models, so callers never
hold a row bound to a closed session)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from nasvit.latency_db.device import DeviceFingerprint
from nasvit.sql import aware


@dataclass(frozen=True)
class DeviceRecord:
    """A stored device; ``overhead_ms`` is None until the builder measured it."""

    id: str
    name: str
    fingerprint: DeviceFingerprint
    created_at: datetime
    overhead_ms: float | None = None
    overhead_iqr_ms: float | None = None
    overhead_n: int | None = None


@dataclass(frozen=True)
class NewEntry:
    """A block latency to insert. ``measured_at`` None means now."""

    key: str
    key_schema: str
    kind: str
    median_ms: float
    iqr_ms: float
    n: int
    profiler: str
    runtime_version: str
    source: str = "measured"
    measured_at: datetime | None = None
    weight_bytes: int | None = None
    cold_median_ms: float | None = None
    cold_iqr_ms: float | None = None
    cold_n: int | None = None
    cold_protocol: str | None = None

    def columns(self) -> dict[str, Any]:
        """Column values, without ``measured_at`` (the store fills the default)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "measured_at"}


@dataclass(frozen=True)
class EntryRecord:
    """A stored block latency. ``median_ms`` is the warm timing; ``cold_median_ms`` (when
    measured) the timing with the block's weights evicted from the cache; ``weight_bytes`` the
    block's parameter and buffer bytes (see :mod:`nasvit.latency_db.cache`)."""

    key: str
    key_schema: str
    kind: str
    median_ms: float
    iqr_ms: float
    n: int
    profiler: str
    runtime_version: str
    source: str
    measured_at: datetime
    weight_bytes: int | None = None
    cold_median_ms: float | None = None
    cold_iqr_ms: float | None = None
    cold_n: int | None = None
    cold_protocol: str | None = None


@dataclass(frozen=True)
class ErrorStats:
    """How far predictions were from whole-network measurements.

    Attributes:
        n: networks compared.
        mape: mean absolute percentage error, in percent.
        within_5: share (0..1) of networks predicted within ±5%.
        within_10: share (0..1) within ±10%.
        spearman: rank correlation of predicted and measured (None below 3 networks).
    """

    n: int
    mape: float
    within_5: float
    within_10: float
    spearman: float | None = None


@dataclass(frozen=True)
class ValidationRecord:
    """A stored validation run: raw figures over all networks, and, when a calibration was
    fitted on ``n_fit`` of them, raw and calibrated figures on the ``n_test`` held-out ones."""

    space: str
    key_schema: str
    raw: ErrorStats
    slope: float | None = None
    intercept: float | None = None
    n_fit: int = 0
    raw_test: ErrorStats | None = None
    calibrated_test: ErrorStats | None = None
    details: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    id: int | None = None
    cache_model: dict[str, Any] | None = None
    cache_test: ErrorStats | None = None

    @property
    def calibration_helps(self) -> bool:
        """Whether the fitted calibration beat the raw sum on the held-out networks."""
        return (
            self.slope is not None
            and self.raw_test is not None
            and self.calibrated_test is not None
            and self.calibrated_test.mape < self.raw_test.mape
        )

    @property
    def cache_model_helps(self) -> bool:
        """Whether the fitted cache residency model beat the raw sum and the linear
        calibration on the held-out networks."""
        if self.cache_model is None or self.cache_test is None or self.raw_test is None:
            return False
        rivals = [self.raw_test.mape]
        if self.calibrated_test is not None:
            rivals.append(self.calibrated_test.mape)
        return self.cache_test.mape < min(rivals)

    @property
    def prediction_path(self) -> str:
        """Which correction later predictions apply: "cache model", "linear calibration" or
        "raw sum"."""
        if self.cache_model_helps:
            return "cache model"
        return "linear calibration" if self.calibration_helps else "raw sum"

    @property
    def prediction_error(self) -> ErrorStats:
        """The error of the path later predictions take (see :class:`LatencyTable`): the cache
        model's or the calibration's on the held-out networks when one of them helped, else the
        raw sum's over all networks (it involves no fitting)."""
        if self.cache_model_helps:
            assert self.cache_test is not None
            return self.cache_test
        if self.calibration_helps:
            assert self.calibrated_test is not None
            return self.calibrated_test
        return self.raw

    @property
    def noise_ceiling(self) -> ErrorStats | None:
        """What a perfect predictor would have scored in this run (see
        :func:`~nasvit.latency_db.table.noise_ceiling`), when some networks were measured twice
        (``validate --repeat``); stored in ``details``, so older runs have None."""
        ceiling = self.details.get("noise_ceiling")
        return None if ceiling is None else ErrorStats(**ceiling)

    def columns(self) -> dict[str, Any]:
        raw_test, calibrated = self.raw_test, self.calibrated_test
        return {
            "space": self.space,
            "key_schema": self.key_schema,
            "n": self.raw.n,
            "mape": self.raw.mape,
            "within_5": self.raw.within_5,
            "within_10": self.raw.within_10,
            "spearman": self.raw.spearman,
            "slope": self.slope,
            "intercept": self.intercept,
            "n_fit": self.n_fit,
            "n_test": raw_test.n if raw_test else 0,
            "raw_test_mape": raw_test.mape if raw_test else None,
            "raw_test_within_5": raw_test.within_5 if raw_test else None,
            "raw_test_within_10": raw_test.within_10 if raw_test else None,
            "calibrated_mape": calibrated.mape if calibrated else None,
            "calibrated_within_5": calibrated.within_5 if calibrated else None,
            "calibrated_within_10": calibrated.within_10 if calibrated else None,
            "details": self.details,
            "cache_model": self.cache_model,
            "cache_test_mape": self.cache_test.mape if self.cache_test else None,
            "cache_test_within_5": self.cache_test.within_5 if self.cache_test else None,
            "cache_test_within_10": self.cache_test.within_10 if self.cache_test else None,
            "cache_test_spearman": self.cache_test.spearman if self.cache_test else None,
        }

    @classmethod
    def from_row(cls, row: Any) -> ValidationRecord:
        raw = ErrorStats(row.n, row.mape, row.within_5, row.within_10, row.spearman)
        raw_test = calibrated = None
        if row.n_test and row.raw_test_mape is not None:
            raw_test = ErrorStats(
                row.n_test, row.raw_test_mape, row.raw_test_within_5, row.raw_test_within_10
            )
        if row.n_test and row.calibrated_mape is not None:
            calibrated = ErrorStats(
                row.n_test, row.calibrated_mape, row.calibrated_within_5, row.calibrated_within_10
            )
        cache_test = None
        if row.n_test and row.cache_test_mape is not None:
            cache_test = ErrorStats(
                row.n_test, row.cache_test_mape, row.cache_test_within_5,
                row.cache_test_within_10, row.cache_test_spearman,
            )  # fmt: skip
        return cls(
            space=row.space,
            key_schema=row.key_schema,
            raw=raw,
            slope=row.slope,
            intercept=row.intercept,
            n_fit=row.n_fit,
            raw_test=raw_test,
            calibrated_test=calibrated,
            details=dict(row.details or {}),
            created_at=aware(row.created_at),
            id=row.id,
            cache_model=dict(row.cache_model) if row.cache_model else None,
            cache_test=cache_test,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (without per-network details)."""

        def stats(s: ErrorStats | None) -> dict[str, Any] | None:
            return None if s is None else {f.name: getattr(s, f.name) for f in fields(s)}

        return {
            "id": self.id,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "space": self.space,
            "key_schema": self.key_schema,
            "raw": stats(self.raw),
            "calibration": None
            if self.slope is None
            else {"slope": self.slope, "intercept": self.intercept, "n_fit": self.n_fit},
            "raw_test": stats(self.raw_test),
            "calibrated_test": stats(self.calibrated_test),
            "cache_model": self.cache_model,
            "cache_test": stats(self.cache_test),
            "noise_ceiling": stats(self.noise_ceiling),
        }
