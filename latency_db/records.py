"""Plain records the store reads and writes (kept apart from the ORM models, so callers never
hold a row bound to a closed session).

The values of a latency entry are declared once, as the fields of :class:`NewEntry` (with
:class:`EntrySpec` metadata); :data:`ENTRY_VALUES` lists them with everything the other layers
need, and the ORM columns (:mod:`~nasvit.latency_db.models`), the table files
(:mod:`~nasvit.latency_db.transfer`) and the service's API schemas derive from it. A new value is
one field here plus an Alembic migration.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import Enum
from typing import Any, Union, get_args, get_origin, get_type_hints

from nasvit.agent.measurement import Measurement
from nasvit.latency_db.device import DeviceFingerprint

# ErrorStats is defined with the error model and re-exported here, where records live.
from nasvit.latency_db.error_model import ErrorModel
from nasvit.latency_db.error_model import ErrorStats as ErrorStats
from nasvit.sql import aware


@dataclass(frozen=True)
class DeviceRecord:
    """A stored device; ``overhead_ms`` is None until the builder (or the device's agent)
    measured it. ``agent_registered_at`` is set once an agent registered the device, and
    ``last_seen_at``/``last_agent`` say when and which agent last talked to the server."""

    id: str
    name: str
    fingerprint: DeviceFingerprint
    created_at: datetime
    overhead_ms: float | None = None
    overhead_iqr_ms: float | None = None
    overhead_n: int | None = None
    agent_registered_at: datetime | None = None
    last_seen_at: datetime | None = None
    last_agent: str | None = None

    @property
    def agent_managed(self) -> bool:
        """Whether an agent measures this device: its timings then come only from work items
        (see :mod:`nasvit.latency_db.work`), never from the machine running the pipeline."""
        return self.agent_registered_at is not None


class Transfer(Enum):
    """How an entry value travels in table files (``nasvit latency export|import``) and in the
    service's measurement uploads."""

    REQUIRED = "required"  # every imported row has it
    OPTIONAL = "optional"  # read when present; else the importer's default (often None)
    EXPORTED = "exported"  # written for information; an import stamps its own
    LOCAL = "local"  # never written: it describes this database, not the measurement


@dataclass(frozen=True)
class EntrySpec:
    """What the layers need to know about an entry value beyond its Python type.

    Attributes:
        doc: what the value is (the API schema's description).
        transfer: how it travels between machines.
        length: strings: the column's length, and the longest value accepted; None is
            unbounded text.
        big: integers: a 64-bit column.
    """

    doc: str
    transfer: Transfer = Transfer.OPTIONAL
    length: int | None = None
    big: bool = False


def _spec(doc: str, transfer: Transfer = Transfer.OPTIONAL, **column: Any) -> dict[str, EntrySpec]:
    """Dataclass field metadata of an entry value."""
    return {"entry": EntrySpec(doc, transfer, **column)}


_MEASURED_AT = _spec("When the entry was stored (UTC).", Transfer.EXPORTED)


@dataclass(frozen=True)
class NewEntry:
    """A block latency to insert. ``measured_at`` None means now.

    These fields are the one declaration of a latency entry's values (see the module
    docstring): each carries its description and column facts as :class:`EntrySpec` metadata.
    """

    key: str = field(metadata=_spec("Block key: key schema|kind|shape.", Transfer.REQUIRED))
    key_schema: str = field(metadata=_spec("Version of the block key format.", length=64))
    kind: str = field(metadata=_spec("Block kind (the key's second part).", length=200))
    median_ms: float = field(
        metadata=_spec("Warm latency, ms: median of per-session medians.", Transfer.REQUIRED)
    )
    iqr_ms: float = field(metadata=_spec("IQR of the warm runs, ms.", Transfer.REQUIRED))
    n: int = field(metadata=_spec("Warm runs timed.", Transfer.REQUIRED))
    profiler: str = field(metadata=_spec("The profiler that measured it.", length=64))
    runtime_version: str = field(metadata=_spec("Version of the runtime it ran on.", length=64))
    source: str = field(
        default="measured",
        metadata=_spec("'measured' here, or 'imported'.", Transfer.LOCAL, length=32),
    )
    measured_at: datetime | None = field(default=None, metadata=_MEASURED_AT)
    weight_bytes: int | None = field(
        default=None, metadata=_spec("The block's parameter and buffer bytes.", big=True)
    )
    cold_median_ms: float | None = field(
        default=None, metadata=_spec("Latency with the block's weights evicted from the cache, ms.")
    )
    cold_iqr_ms: float | None = field(default=None, metadata=_spec("IQR of the cold runs, ms."))
    cold_n: int | None = field(default=None, metadata=_spec("Cold runs timed."))
    cold_protocol: str | None = field(
        default=None, metadata=_spec("The protocol of the cold timing.", length=32)
    )

    def columns(self) -> dict[str, Any]:
        """Column values, without ``measured_at`` (the store fills the default)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "measured_at"}


@dataclass(frozen=True)
class EntryRecord(NewEntry):
    """A stored block latency: a :class:`NewEntry` whose ``measured_at`` is set. ``median_ms``
    is the warm timing; ``cold_median_ms`` (when measured, with ``cold_protocol``:
    :data:`~nasvit.latency_db.replicate.COLD_PROTOCOL`) the timing with the block's weights
    evicted from the cache; ``weight_bytes`` the block's parameter and buffer bytes (see
    :mod:`nasvit.latency_db.cache`)."""

    measured_at: datetime = field(kw_only=True, metadata=_MEASURED_AT)


@dataclass(frozen=True)
class EntryValue:
    """One value of a stored latency entry, as the ORM, the table files and the API see it.

    Attributes:
        name: the field, column, file column and API field name.
        type: ``str``, ``int``, ``float`` or ``datetime``.
        required: never None in a stored entry (a NOT NULL column).
        default: :class:`NewEntry`'s default; ``dataclasses.MISSING`` when it has none.
        spec: the rest of the declaration.
    """

    name: str
    type: type
    required: bool
    default: Any
    spec: EntrySpec


def _entry_values() -> tuple[EntryValue, ...]:
    stored = get_type_hints(EntryRecord)  # a stored entry's types: its measured_at is set
    values = []
    for declared in fields(NewEntry):
        hint = stored[declared.name]
        optional = get_origin(hint) in (Union, types.UnionType) and type(None) in get_args(hint)
        (kind,) = [a for a in get_args(hint) if a is not type(None)] if optional else [hint]
        values.append(
            EntryValue(
                declared.name, kind, not optional, declared.default, declared.metadata["entry"]
            )
        )
    return tuple(values)


#: Every value of a latency entry, in declaration order (derived from :class:`NewEntry`).
ENTRY_VALUES: tuple[EntryValue, ...] = _entry_values()
#: The values a table file or an upload supplies (the required ones on every row).
IMPORTED_VALUES = tuple(
    v for v in ENTRY_VALUES if v.spec.transfer in (Transfer.REQUIRED, Transfer.OPTIONAL)
)

#: The statistics of a :class:`Measurement` an entry keeps: warm as named, cold as ``cold_*``.
TIMING_STATS = ("median_ms", "iqr_ms", "n")


def timing_values(warm: Measurement, cold: Measurement | None) -> dict[str, Any]:
    """An entry's timing values from its warm and (when taken) cold measurement."""
    values = {name: getattr(warm, name) for name in TIMING_STATS}
    for name in TIMING_STATS:
        values[f"cold_{name}"] = None if cold is None else getattr(cold, name)
    return values


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
    def error_model(self) -> ErrorModel | None:
        """The models per band and the judged residuals behind every interval (see
        :mod:`~nasvit.latency_db.error_model`); None for runs stored before intervals existed:
        a table validated only by those is treated as never validated."""
        data = self.details.get("error_model")
        return None if data is None else ErrorModel.from_dict(data)

    @property
    def prediction_error(self) -> ErrorStats:
        """The error of the predictions later made from this run: the per-band choice of model
        on the judged networks, else (an old run) the sum model's over all networks."""
        model = self.error_model
        return self.raw if model is None else model.judged

    @property
    def prediction_path(self) -> str:
        """Which model predictions use, per band: e.g. "sum, sum, residency, residency"."""
        model = self.error_model
        return "sum" if model is None else ", ".join(b.model for b in model.bands)

    @property
    def noise_ceiling(self) -> ErrorStats | None:
        """What a perfect predictor would have scored against this run's truth (the median of
        each network's readings, :func:`~nasvit.latency_db.error_model.truth_noise_ceiling`);
        None when no network was read twice."""
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
            "prediction_error": stats(self.prediction_error),
            "bands": None if self.error_model is None else self.error_model.describe_bands(),
        }
