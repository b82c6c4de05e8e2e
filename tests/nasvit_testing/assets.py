"""Session fixture ``search_assets``: a small real checkpoint and its latency table for this
machine, for the service and cluster tests (searches there never profile blocks)."""

from __future__ import annotations

from typing import Any

import pytest

from nasvit_testing.toy_spaces import small_efficientformer


@pytest.fixture(scope="session")
def search_assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A small checkpoint, and its blocks' latency table for this machine, measured and
    validated once into a SQLite database, and exported as JSON (for PostgreSQL databases)."""
    import torch

    from nasvit.evaluation.latency import resolve_device, validate_table
    from nasvit.latency_db import LatencyStore, MeasurementProtocol, build_table, make_profiler
    from nasvit.latency_db.transfer import export_table
    from nasvit.training.checkpoint import save_supernet

    folder = tmp_path_factory.mktemp("server-assets")
    space = small_efficientformer()
    torch.manual_seed(0)
    supernet = space.build_supernet(num_classes=10, in_channels=1)
    checkpoint = save_supernet(folder / "tiny.pt", space, supernet)

    database = folder / "table.db"
    store = LatencyStore.open(f"sqlite:///{database}")
    device, _ = resolve_device(store)  # the device a worker resolves when none is named
    quick = MeasurementProtocol.quick()
    profiler = make_profiler("onnxruntime", 1, "all", quick)
    shape = {"num_classes": 10, "in_channels": 1}
    build_table(store, profiler, device, space.enumerate_blocks(**shape))
    # A validated table, so a search does not first validate it on whole networks.
    validate_table(space, store, profiler, device, 4, network_protocol=quick, **shape)
    table = folder / "table.json"
    export_table(store, device.id, table)
    validation = store.latest_validation(device.id)
    store.close()
    return {"checkpoint": checkpoint, "database": database, "table": table, "device": device.id,
            "validation": validation}  # fmt: skip
