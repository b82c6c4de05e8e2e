"""The SQL store behind latency tables (SQLAlchemy 2; SQLite by default, PostgreSQL for the
service).

Contract:
    - :meth:`LatencyStore.open` applies the packaged Alembic migrations (``upgrade head``); two
      processes opening a fresh database at once are serialised (BEGIN IMMEDIATE on SQLite, an
      advisory lock on PostgreSQL; see :mod:`nasvit.sql`).
    - Every write happens in one :meth:`LatencyStore.transaction`: all or nothing.
    - There is at most one entry per (device, key); adding an entry that exists is a no-op, so
      concurrent table builders never duplicate rows, and the first measurement wins.
    - Methods return plain frozen records (:mod:`nasvit.latency_db.records`), never ORM objects
      bound to a closed session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, RowMapping, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from nasvit.errors import NasvitError, UnknownNameError
from nasvit.latency_db.device import DeviceFingerprint
from nasvit.latency_db.models import Device, LatencyEntry, ValidationRun
from nasvit.latency_db.records import (
    ENTRY_VALUES,
    DeviceRecord,
    EntryRecord,
    NewEntry,
    ValidationRecord,
)
from nasvit.settings import load_settings
from nasvit.sql import aware, make_engine, upgrade, utcnow

if TYPE_CHECKING:
    from sqlalchemy.dialects.postgresql import Insert as PostgresInsert
    from sqlalchemy.dialects.sqlite import Insert as SqliteInsert

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_CHUNK = 500  # rows per INSERT / IN (...) statement; far below every backend's parameter limit
#: The entry table's columns (derived from the records' declaration, so not typed attributes).
_entries = LatencyEntry.__table__.c


def _device_record(row: Device) -> DeviceRecord:
    return DeviceRecord(
        id=row.id,
        name=row.name,
        fingerprint=DeviceFingerprint.from_dict(dict(row.fingerprint)),
        created_at=aware(row.created_at),
        overhead_ms=row.overhead_ms,
        overhead_iqr_ms=row.overhead_iqr_ms,
        overhead_n=row.overhead_n,
        agent_registered_at=aware(row.agent_registered_at),
        last_seen_at=aware(row.last_seen_at),
        last_agent=row.last_agent,
    )


def dialect_insert(session: Session) -> Callable[[Any], PostgresInsert | SqliteInsert]:
    """The session's backend's ``insert``: ON CONFLICT (insert-or-ignore, upserts) has no
    portable SQLAlchemy form, and both supported backends spell it the same way."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgres_insert

        return postgres_insert
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert
    raise NasvitError(f"unsupported database backend '{dialect}'")  # pragma: no cover


def _entry_record(row: RowMapping) -> EntryRecord:
    return EntryRecord(
        **{v.name: aware(row[v.name]) if v.type is datetime else row[v.name] for v in ENTRY_VALUES}
    )


class LatencyStore:
    """Devices, latency entries and validation runs in one SQL database."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str | None = None) -> LatencyStore:
        """Connect to ``url`` and migrate to head; the default is the database of the
        environment's settings (:attr:`nasvit.settings.Settings.resolved_database_url`)."""
        engine = make_engine(url or load_settings().resolved_database_url)
        upgrade(engine, MIGRATIONS_DIR)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work is committed on success and rolled back on any error."""
        with self._sessions() as session, session.begin():
            yield session

    # ------------------------------------------------------------------ devices
    def ensure_device(
        self, fingerprint: DeviceFingerprint, name: str | None = None
    ) -> DeviceRecord:
        """The device with this fingerprint, created if new.

        The name defaults to ``fingerprint.default_name()``; if another device already has it
        (say, the same settings with a newer runtime), the id's first six digits are appended.
        An explicit ``name`` taken by another device is an error.
        """
        with self.transaction() as session:
            row = session.get(Device, fingerprint.device_id)
            if row is None:
                chosen = name or fingerprint.default_name()
                taken = session.scalar(select(Device).where(Device.name == chosen))
                if taken is not None:
                    if name is not None:
                        raise NasvitError(f"device name '{name}' is taken by device {taken.id}")
                    chosen = f"{chosen}-{fingerprint.device_id[:6]}"
                row = Device(
                    id=fingerprint.device_id,
                    name=chosen,
                    fingerprint=fingerprint.to_dict(),
                    created_at=utcnow(),
                )
                session.add(row)
                session.flush()
            return _device_record(row)

    def devices(self) -> list[DeviceRecord]:
        with self.transaction() as session:
            return [
                _device_record(r) for r in session.scalars(select(Device).order_by(Device.name))
            ]

    def device(self, name_or_id: str) -> DeviceRecord:
        """A device by name or id; :class:`UnknownNameError` lists the known names."""
        with self.transaction() as session:
            row = session.get(Device, name_or_id) or session.scalar(
                select(Device).where(Device.name == name_or_id)
            )
            if row is None:
                known = session.scalars(select(Device.name)).all()
                raise UnknownNameError("device", name_or_id, known)
            return _device_record(row)

    def set_overhead(self, device_id: str, median_ms: float, iqr_ms: float, n: int) -> None:
        with self.transaction() as session:
            row = session.get(Device, device_id)
            if row is None:
                raise UnknownNameError("device", device_id, [])
            row.overhead_ms, row.overhead_iqr_ms, row.overhead_n = median_ms, iqr_ms, n

    # ------------------------------------------------------------------ entries
    def _keys_where(self, device_id: str, wanted: list[str], *conditions: Any) -> set[str]:
        """Which of ``wanted`` have an entry on the device meeting ``conditions`` (queried in
        chunks: databases bound the size of an IN list)."""
        found: set[str] = set()
        with self.transaction() as session:
            for start in range(0, len(wanted), _CHUNK):
                query = select(_entries.key).where(
                    _entries.device_id == device_id,
                    _entries.key.in_(wanted[start : start + _CHUNK]),
                    *conditions,
                )
                found.update(session.scalars(query))
        return found

    def missing_keys(self, device_id: str, keys: Iterable[str]) -> list[str]:
        """The keys (in the given order, without repeats) that have no entry yet."""
        wanted = list(dict.fromkeys(keys))
        present = self._keys_where(device_id, wanted)
        return [key for key in wanted if key not in present]

    def stale_cold_keys(
        self, device_id: str, keys: Iterable[str], min_weight_bytes: int, protocol: str
    ) -> list[str]:
        """The keys (in the given order, without repeats) of *measured* entries heavy enough
        for a cold timing (``weight_bytes > min_weight_bytes``) whose cold timing is missing or
        came from a protocol other than ``protocol``. Imported entries are never stale: they
        cannot be re-measured here."""
        wanted = list(dict.fromkeys(keys))
        stale = self._keys_where(
            device_id,
            wanted,
            _entries.source == "measured",
            _entries.weight_bytes > min_weight_bytes,
            or_(_entries.cold_protocol.is_(None), _entries.cold_protocol != protocol),
        )
        return [key for key in wanted if key in stale]

    def add_entries(
        self,
        device_id: str,
        entries: Sequence[NewEntry],
        session: Session | None = None,
        replace: bool = False,
    ) -> int:
        """Insert entries whose key is new for this device; returns how many were inserted.

        Existing (device, key) rows are left alone (insert-or-ignore), which is what makes
        concurrent builders safe; with ``replace`` they are overwritten instead (re-measured
        entries: still one row per key, the last writer's). Pass ``session`` to join a larger
        transaction.
        """
        if session is None:
            with self.transaction() as own:
                return self.add_entries(device_id, entries, own, replace)
        insert = dialect_insert(session)
        count = self._count(session, device_id)
        now = utcnow()
        for start in range(0, len(entries), _CHUNK):
            rows = [
                {"device_id": device_id, "measured_at": entry.measured_at or now} | entry.columns()
                for entry in entries[start : start + _CHUNK]
            ]
            statement = insert(LatencyEntry).values(rows)
            if replace:
                replaced = {c: statement.excluded[c] for c in rows[0] if c != "device_id"}
                statement = statement.on_conflict_do_update(
                    index_elements=["device_id", "key"], set_=replaced
                )
            else:
                statement = statement.on_conflict_do_nothing(index_elements=["device_id", "key"])
            session.execute(statement)
        return self._count(session, device_id) - count

    @staticmethod
    def _count(session: Session, device_id: str) -> int:
        query = select(func.count()).where(_entries.device_id == device_id)
        return int(session.scalar(query) or 0)

    def entry_count(self, device_id: str) -> int:
        with self.transaction() as session:
            return self._count(session, device_id)

    def entries(self, device_id: str) -> dict[str, EntryRecord]:
        """Every entry of a device, by key."""
        with self.transaction() as session:
            query = select(LatencyEntry.__table__).where(_entries.device_id == device_id)
            rows = session.execute(query).mappings()
            return {row["key"]: _entry_record(row) for row in rows}

    # ------------------------------------------------------------------ validation
    def add_validation(self, device_id: str, record: ValidationRecord) -> int:
        """Store a validation run; returns its id."""
        with self.transaction() as session:
            row = ValidationRun(device_id=device_id, created_at=utcnow(), **record.columns())
            session.add(row)
            session.flush()
            return int(row.id)

    def latest_validation(
        self, device_id: str, space: str | None = None
    ) -> ValidationRecord | None:
        """The device's newest validation run; with ``space``, the newest run on that space."""
        with self.transaction() as session:
            query = select(ValidationRun).where(ValidationRun.device_id == device_id)
            if space is not None:
                query = query.where(ValidationRun.space == space)
            query = query.order_by(ValidationRun.created_at.desc(), ValidationRun.id.desc())
            row = session.scalar(query.limit(1))
            return None if row is None else ValidationRecord.from_row(row)

    def validation_count(self, device_id: str) -> int:
        with self.transaction() as session:
            query = select(func.count()).where(ValidationRun.device_id == device_id)
            return int(session.scalar(query) or 0)
