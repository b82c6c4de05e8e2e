"""Move latency tables between machines as CSV or JSON (pandas).

Format: one row per entry with the columns in :data:`ENTRY_COLUMNS` (every entry value but the
store's own bookkeeping, see :class:`~nasvit.latency_db.records.Transfer`); the device travels with
it (JSON: a ``device`` object; CSV: ``device_name``, ``device_id``, ``overhead_ms`` and
``fingerprint`` columns repeated on every row). Imports are validated completely before
anything is written and then written in one transaction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from nasvit.errors import NasvitError
from nasvit.latency_db.device import DeviceFingerprint
from nasvit.latency_db.models import Device
from nasvit.latency_db.records import ENTRY_VALUES, IMPORTED_VALUES, NewEntry, Transfer
from nasvit.latency_db.store import LatencyStore
from nasvit.nn.blocks import BLOCK_KEY_SCHEMA

FORMAT = "nasvit-latency-table/1"
#: Entry columns of a table file, in the declaration's order (derived from ENTRY_VALUES).
ENTRY_COLUMNS = tuple(v.name for v in ENTRY_VALUES if v.spec.transfer is not Transfer.LOCAL)
REQUIRED_COLUMNS = tuple(v.name for v in IMPORTED_VALUES if v.spec.transfer is Transfer.REQUIRED)
#: Numbers that must be present and non-negative on every row.
REQUIRED_NUMERIC = tuple(
    v.name
    for v in IMPORTED_VALUES
    if v.spec.transfer is Transfer.REQUIRED and v.type in (int, float)
)
#: Optional numbers (e.g. the cache-state columns): empty, or non-negative.
OPTIONAL_NUMERIC = tuple(
    v.name
    for v in IMPORTED_VALUES
    if v.spec.transfer is Transfer.OPTIONAL and v.type in (int, float)
)


class TableImportError(NasvitError):
    """An import file that cannot be used; nothing was written."""


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise NasvitError(f"table files end in .csv or .json, got '{path.name}'")
    return suffix


def export_table(store: LatencyStore, device: str, path: str | Path) -> int:
    """Write a device's entries to ``path`` (.csv or .json); returns the entry count."""
    path = Path(path)
    suffix = _suffix(path)
    record = store.device(device)
    entries = store.entries(record.id)
    frame = pd.DataFrame(
        [{c: getattr(e, c) for c in ENTRY_COLUMNS} for e in entries.values()],
        columns=list(ENTRY_COLUMNS),
    ).sort_values("key")
    for value in ENTRY_VALUES:
        if value.type is datetime and value.name in ENTRY_COLUMNS:
            frame[value.name] = frame[value.name].astype(str)
    device_info = {
        "name": record.name,
        "id": record.id,
        "overhead_ms": record.overhead_ms,
        "fingerprint": record.fingerprint.to_dict(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".json":
        document = {
            "format": FORMAT,
            "device": device_info,
            "entries": frame.to_dict(orient="records"),
        }
        path.write_text(json.dumps(document, indent=1), encoding="utf-8")
    else:
        frame["device_name"] = record.name
        frame["device_id"] = record.id
        frame["overhead_ms"] = record.overhead_ms
        frame["fingerprint"] = json.dumps(device_info["fingerprint"], sort_keys=True)
        frame.to_csv(path, index=False)
    return len(frame)


def _read(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    suffix = _suffix(path)
    if not path.is_file():
        raise TableImportError(f"no such file: {path}")
    try:
        if suffix == ".json":
            document = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(document, dict) or document.get("format") != FORMAT:
                raise TableImportError(f"{path.name}: not a {FORMAT} document")
            return pd.DataFrame(document.get("entries") or []), dict(document.get("device") or {})
        frame = pd.read_csv(path)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise TableImportError(f"{path.name}: unreadable ({error})") from None
    device: dict[str, Any] = {}
    for column in ("device_name", "overhead_ms", "fingerprint"):
        if column in frame.columns and len(frame) and pd.notna(frame[column].iloc[0]):
            device[column.removeprefix("device_")] = frame[column].iloc[0]
    if isinstance(device.get("fingerprint"), str):
        device["fingerprint"] = json.loads(device["fingerprint"])
    return frame, device


def _check(frame: pd.DataFrame, name: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise TableImportError(f"{name}: missing column(s) {', '.join(missing)}")
    if frame.empty:
        raise TableImportError(f"{name}: no entries")
    for column in REQUIRED_NUMERIC:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = frame.index[values.isna() | (values < 0)]
        if len(bad):
            row = int(bad[0]) + 2 if name.endswith(".csv") else int(bad[0])
            raise TableImportError(
                f"{name}: {len(bad)} row(s) with a missing or negative {column} "
                f"(first at {'line' if name.endswith('.csv') else 'entry'} {row})"
            )
    for column in OPTIONAL_NUMERIC:
        if column not in frame.columns:
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = frame.index[(values.isna() & frame[column].notna()) | (values < 0)]
        if len(bad):
            raise TableImportError(f"{name}: {len(bad)} row(s) with an invalid {column}")
    if (pd.to_numeric(frame["median_ms"]) == 0).any():
        raise TableImportError(f"{name}: a median latency of 0 ms is not a measurement")
    keys = frame["key"].astype(str)
    foreign = keys[~keys.str.startswith(BLOCK_KEY_SCHEMA + "|")]
    if len(foreign):
        found = foreign.iloc[0].split("|", 1)[0]
        raise TableImportError(
            f"{name}: key schema '{found}' does not match this version's '{BLOCK_KEY_SCHEMA}' "
            f"({len(foreign)} entries); re-profile the device with this version"
        )
    if "key_schema" in frame.columns:
        schemas = set(frame["key_schema"].dropna().astype(str)) - {BLOCK_KEY_SCHEMA}
        if schemas:
            raise TableImportError(
                f"{name}: key_schema {sorted(schemas)} does not match '{BLOCK_KEY_SCHEMA}'"
            )
    duplicated = keys[keys.duplicated()]
    if len(duplicated):
        raise TableImportError(f"{name}: duplicate key {duplicated.iloc[0]}")


@dataclass(frozen=True)
class ImportResult:
    device: str
    inserted: int
    skipped: int


def import_table(
    store: LatencyStore, path: str | Path, device_name: str | None = None
) -> ImportResult:
    """Import a table file as a device (created if new); existing keys are kept.

    Raises:
        TableImportError: missing columns, NaN / negative / zero latencies, a foreign key
            schema, duplicate keys, or no device name; nothing is written then.
    """
    path = Path(path)
    frame, device = _read(path)
    _check(frame, path.name)
    name = device_name or device.get("name")
    if not name:
        raise TableImportError(
            f"{path.name}: no device name in the file; name the device", argument="device_name"
        )
    try:
        fingerprint = DeviceFingerprint.from_dict(dict(device["fingerprint"]))
    except (KeyError, TypeError):
        raise TableImportError(f"{path.name}: no valid device fingerprint") from None
    overhead = device.get("overhead_ms")
    overhead = None if overhead is None or pd.isna(overhead) else float(overhead)

    def read(row: dict[str, Any]) -> NewEntry:
        # What a row may leave out: its kind is in the key, its runtime in the device; other
        # optional values are None.
        fallback = {
            "kind": str(row["key"]).split("|")[1],
            "profiler": "unknown",
            "runtime_version": fingerprint.runtime_version,
        }
        values: dict[str, Any] = {}
        for value in IMPORTED_VALUES:
            given = row.get(value.name)
            missing = given is None or pd.isna(given)
            values[value.name] = fallback.get(value.name) if missing else value.type(given)
        # _check refused any key schema but this version's, which every row is stored with.
        values["key_schema"] = BLOCK_KEY_SCHEMA
        return NewEntry(**values, source="imported")

    entries = [read(row) for row in frame.to_dict(orient="records")]
    with store.transaction() as session:
        row = session.get(Device, fingerprint.device_id)
        if row is None:
            taken = session.query(Device).filter(Device.name == name).first()
            if taken is not None:
                raise TableImportError(
                    f"device name '{name}' is taken by device {taken.id}; choose another name",
                    argument="device_name",
                )
            row = Device(id=fingerprint.device_id, name=name, fingerprint=fingerprint.to_dict())
            session.add(row)
        if row.overhead_ms is None:
            row.overhead_ms = overhead
        session.flush()
        inserted = store.add_entries(row.id, entries, session=session)
        return ImportResult(device=row.name, inserted=inserted, skipped=len(entries) - inserted)
