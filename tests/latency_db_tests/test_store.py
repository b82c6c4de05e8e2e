"""Store conformance: every test runs on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime

import pytest
from sqlalchemy import inspect

from nasvit.errors import NasvitError, UnknownNameError
from nasvit.latency_db import (
    DeviceFingerprint,
    ErrorStats,
    LatencyStore,
    NewEntry,
    ValidationRecord,
)


def fingerprint(threads: int = 1, cpu: str = "Test CPU") -> DeviceFingerprint:
    return DeviceFingerprint(
        cpu_model=cpu,
        cores=2,
        memory_gib=8,
        os="Linux x86_64",
        runtime="onnxruntime",
        runtime_version="1.0",
        provider="CPUExecutionProvider",
        threads=threads,
        optimization="all",
    )


def entry(key: str, median: float = 1.0) -> NewEntry:
    return NewEntry(
        key=f"nasvit-block/1|k|{key}",
        key_schema="nasvit-block/1",
        kind="k",
        median_ms=median,
        iqr_ms=0.1,
        n=10,
        profiler="test",
        runtime_version="1.0",
    )


def test_open_applies_migrations_idempotently(store: LatencyStore, database_url: str) -> None:
    tables = set(inspect(store.engine).get_table_names())
    assert {"latency_devices", "latency_entries", "latency_validation_runs"} <= tables
    assert "alembic_version_latency_db" in tables
    LatencyStore.open(database_url).close()  # a second open is a no-op


def test_ensure_device_is_idempotent_and_names_are_unique(store: LatencyStore) -> None:
    first = store.ensure_device(fingerprint())
    assert first.name == "local-cpu-ort-1t"
    assert store.ensure_device(fingerprint()) == first
    other_host = store.ensure_device(fingerprint(cpu="Other CPU"))
    assert other_host.name == f"local-cpu-ort-1t-{other_host.id[:6]}"
    with pytest.raises(NasvitError, match="taken"):
        store.ensure_device(fingerprint(threads=2), name="local-cpu-ort-1t")
    assert [d.name for d in store.devices()] == sorted([first.name, other_host.name])
    assert store.device(first.id) == store.device(first.name) == first


def test_unknown_device_names_the_known_ones(store: LatencyStore) -> None:
    store.ensure_device(fingerprint())
    with pytest.raises(UnknownNameError, match="did you mean 'local-cpu-ort-1t'"):
        store.device("local-cpu-ort-2t")


def test_entries_are_inserted_once_per_key(store: LatencyStore) -> None:
    device = store.ensure_device(fingerprint())
    assert store.add_entries(device.id, [entry("a"), entry("b")]) == 2
    assert store.add_entries(device.id, [entry("b", median=9.0), entry("c")]) == 1
    entries = store.entries(device.id)
    assert sorted(entries) == [entry(k).key for k in "abc"]
    assert entries[entry("b").key].median_ms == 1.0  # the first measurement wins
    assert isinstance(entries[entry("a").key].measured_at, datetime)
    keys = [entry(k).key for k in "dacd"]
    assert store.missing_keys(device.id, keys) == [entry("d").key]
    other = store.ensure_device(fingerprint(threads=2))
    assert store.entry_count(other.id) == 0


def test_a_failed_transaction_writes_nothing(store: LatencyStore) -> None:
    device = store.ensure_device(fingerprint())
    with pytest.raises(RuntimeError), store.transaction() as session:
        store.add_entries(device.id, [entry("a")], session=session)
        raise RuntimeError("boom")
    assert store.entry_count(device.id) == 0


def test_many_entries_span_several_statements(store: LatencyStore) -> None:
    device = store.ensure_device(fingerprint())
    assert store.add_entries(device.id, [entry(str(i)) for i in range(1203)]) == 1203
    assert store.missing_keys(device.id, [entry(str(i)).key for i in range(1300)]) == [
        entry(str(i)).key for i in range(1203, 1300)
    ]


def test_overhead_and_validation_round_trip(store: LatencyStore) -> None:
    device = store.ensure_device(fingerprint())
    store.set_overhead(device.id, 0.005, 0.001, 120)
    assert store.device(device.id).overhead_ms == pytest.approx(0.005)
    assert store.latest_validation(device.id) is None
    record = ValidationRecord(
        space="efficientformer",
        key_schema="nasvit-block/1",
        raw=ErrorStats(6, 4.0, 0.5, 0.9, 0.95),
        slope=1.1,
        intercept=0.2,
        n_fit=3,
        raw_test=ErrorStats(3, 5.0, 0.4, 0.8),
        calibrated_test=ErrorStats(3, 2.0, 0.9, 1.0),
        details={"networks": [{"arch": "x", "predicted_ms": 1.0, "measured_ms": 1.1}]},
    )
    store.add_validation(device.id, record)
    second = store.add_validation(device.id, record)
    latest = store.latest_validation(device.id)
    assert latest is not None and latest.id == second
    assert latest.raw == record.raw and latest.calibrated_test == record.calibrated_test
    assert latest.details == record.details and latest.error_model is None
    assert latest.prediction_error == record.raw and latest.prediction_path == "sum"
    assert store.validation_count(device.id) == 2


_WORKER = """
import sys
from nasvit.latency_db import LatencyStore, NewEntry
url, worker, device_id = sys.argv[1], int(sys.argv[2]), sys.argv[3]
store = LatencyStore.open(url)
if device_id:
    for start in range(0, 60, 10):
        # Both workers write the same keys in different orders and batch shapes.
        keys = [str((start + i * (worker + 1)) % 60) for i in range(10)]
        store.add_entries(device_id, [NewEntry(
            key=f"nasvit-block/1|k|{k}", key_schema="nasvit-block/1", kind="k",
            median_ms=worker + 1.0, iqr_ms=0.1, n=10, profiler="test", runtime_version="1.0",
        ) for k in keys])
store.close()
"""


def _run_workers(url: str, device_id: str = "") -> None:
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, url, str(w), device_id],
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(2)
    ]
    errors = [p.communicate(timeout=120)[1] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], "\n".join(errors)


def test_concurrent_processes_never_duplicate_entries(database_url: str) -> None:
    # Two processes migrating a fresh database at once must not trip over each other.
    _run_workers(database_url)
    store = LatencyStore.open(database_url)
    device = store.ensure_device(fingerprint())
    _run_workers(database_url, device.id)
    assert store.entry_count(device.id) == 60
    assert sorted(store.entries(device.id)) == sorted(entry(str(i)).key for i in range(60))
    store.close()


def test_migrations_create_exactly_the_orm_schema(store: LatencyStore) -> None:
    """The ORM models and the Alembic migrations describe the same tables, columns, types,
    indexes and constraints on each backend (autogenerate finds nothing to add or drop)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from nasvit.latency_db.models import Base

    with store.engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "include_object": _not_version_table}
        )
        differences = compare_metadata(context, Base.metadata)
    assert differences == []


def _not_version_table(obj: object, name: str | None, kind: str, *_: object) -> bool:
    """Alembic's own bookkeeping table is not part of the models."""
    return not (kind == "table" and name is not None and name.startswith("alembic_version"))


def test_stale_cold_entries_are_found_and_replaced_in_place(store: LatencyStore) -> None:
    """Only measured entries heavy enough for a cold timing and without the current protocol's
    are stale; replacing overwrites the row (still one per key) on each backend."""
    import dataclasses

    device = store.ensure_device(fingerprint())
    heavy = {"weight_bytes": 10_000}
    rows = [
        dataclasses.replace(entry("old"), **heavy),  # no protocol: before versions were stored
        dataclasses.replace(entry("other"), **heavy, cold_protocol="streamed/0"),
        dataclasses.replace(entry("current"), **heavy, cold_protocol="streamed/1"),
        dataclasses.replace(entry("imported"), **heavy, source="imported"),
        dataclasses.replace(entry("light"), weight_bytes=100),
    ]
    store.add_entries(device.id, rows)
    keys = [r.key for r in rows]
    assert store.stale_cold_keys(device.id, keys, 1_000, "streamed/1") == keys[:2]
    renewed = dataclasses.replace(rows[0], median_ms=2.5, cold_protocol="streamed/1")
    assert store.add_entries(device.id, [renewed]) == 0  # insert-or-ignore leaves it
    assert store.entries(device.id)[renewed.key].median_ms == 1.0
    assert store.add_entries(device.id, [renewed], replace=True) == 0  # no new row
    stored = store.entries(device.id)[renewed.key]
    assert stored.median_ms == 2.5 and stored.cold_protocol == "streamed/1"
    assert store.entry_count(device.id) == len(rows)
    assert store.stale_cold_keys(device.id, keys, 1_000, "streamed/1") == keys[1:2]
