"""Every value of a latency entry, declared once (``NewEntry``'s fields), survives each layer
derived from that declaration: the store, table files, and the service's API schemas."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from nasvit.latency_db import DeviceFingerprint, EntryRecord, LatencyStore, NewEntry
from nasvit.latency_db.records import ENTRY_VALUES, IMPORTED_VALUES, EntryValue, Transfer
from nasvit.latency_db.transfer import export_table, import_table
from nasvit.nn.blocks import BLOCK_KEY_SCHEMA

MEASURED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def _sample(value: EntryValue, index: int) -> Any:
    """A value of the right type that no default equals."""
    if value.name == "key":
        return f"{BLOCK_KEY_SCHEMA}|k|{index}"
    if value.name == "key_schema":
        return BLOCK_KEY_SCHEMA  # the importer refuses any other
    if value.type is str:
        return f"{value.name[:20]}-{index}"
    if value.type is datetime:
        return MEASURED_AT
    return value.type(1000 + index)  # int or float; non-negative, as an import requires


def _full_entries(count: int = 3) -> list[NewEntry]:
    return [NewEntry(**{v.name: _sample(v, i) for v in ENTRY_VALUES}) for i in range(count)]


def _fingerprint() -> DeviceFingerprint:
    return DeviceFingerprint("cpu", 1, 1, "os", "onnxruntime", "1", "CPU", 1, "all")


def test_the_declaration_covers_every_field_of_both_records() -> None:
    names = [v.name for v in ENTRY_VALUES]
    assert names == [f.name for f in dataclasses.fields(NewEntry)]
    assert sorted(names) == sorted(f.name for f in dataclasses.fields(EntryRecord))


def test_the_store_keeps_every_value(store: LatencyStore) -> None:
    device = store.ensure_device(_fingerprint())
    written = _full_entries()
    assert store.add_entries(device.id, written) == len(written)
    stored = store.entries(device.id)
    for entry in written:
        assert dataclasses.asdict(stored[entry.key]) == dataclasses.asdict(entry)


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_table_files_carry_every_value_an_import_reads(tmp_path: Path, suffix: str) -> None:
    source = LatencyStore.open(f"sqlite:///{tmp_path / 'source.db'}")
    device = source.ensure_device(_fingerprint())
    written = _full_entries()
    source.add_entries(device.id, written)
    path = tmp_path / f"table{suffix}"
    export_table(source, device.id, path)

    target = LatencyStore.open(f"sqlite:///{tmp_path / 'target.db'}")
    result = import_table(target, path, device_name="elsewhere")
    assert result.inserted == len(written)
    imported = target.entries(target.device("elsewhere").id)
    for entry in written:
        copy = imported[entry.key]
        for value in IMPORTED_VALUES:
            assert getattr(copy, value.name) == getattr(entry, value.name), value.name
        assert copy.source == "imported"  # LOCAL: describes the database it is in
    source.close()
    target.close()


def test_the_api_schemas_follow_the_declaration(sqlite_store: LatencyStore) -> None:
    from nasvit.server import schemas

    device = sqlite_store.ensure_device(_fingerprint())
    [entry] = _full_entries(1)
    sqlite_store.add_entries(device.id, [entry])
    record = sqlite_store.entries(device.id)[entry.key]
    shown = schemas.Entry.model_validate(record, from_attributes=True).model_dump()
    assert shown == dataclasses.asdict(record)  # a response shows every stored value

    upload = {v.name: getattr(entry, v.name) for v in IMPORTED_VALUES}
    assert schemas.UploadEntry.model_validate(upload).model_dump() == upload
    required = {name for name, f in schemas.UploadEntry.model_fields.items() if f.is_required()}
    assert required == {v.name for v in IMPORTED_VALUES if v.spec.transfer is Transfer.REQUIRED}
    too_long = {**upload, "profiler": "p" * 65}  # longer than its column
    with pytest.raises(ValueError, match="profiler"):
        schemas.UploadEntry.model_validate(too_long)
