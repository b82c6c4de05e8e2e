"""Fixtures for the job service: a small real checkpoint and latency table, and deployments
(nasvit_testing.service) over SQLite or a real PostgreSQL (the nasvit_testing.postgres plugin).

Searches stay small: an untrained supernet over a restricted slice of efficientformer at
resolution 32 (as the pipeline tests use), a budget most candidates meet, and a latency table
measured once per session with the quick protocol (PostgreSQL databases get it imported), so a
worker never profiles blocks.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from nasvit_testing.postgres import fresh_postgres_db
from nasvit_testing.service import Deployment, environment, start_deployment
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


@pytest.fixture(scope="module")
def sqlite_service(
    tmp_path_factory: pytest.TempPathFactory, search_assets: dict[str, Any]
) -> Iterator[Deployment]:
    """The default setup: SQLite under NASVIT_HOME (holding the measured table), public reads."""
    home = tmp_path_factory.mktemp("sqlite-home")
    shutil.copy(search_assets["database"], home / "nasvit.db")
    deployment = Deployment(env=environment(home, search_assets), home=home)
    try:
        yield start_deployment(deployment)
    finally:
        deployment.stop()


@pytest.fixture(scope="module")
def postgres_service(
    tmp_path_factory: pytest.TempPathFactory, search_assets: dict[str, Any], postgres_url: str
) -> Iterator[Deployment]:
    """PostgreSQL with the latency table imported; reads need a token; one CORS origin."""
    from nasvit.latency_db import LatencyStore
    from nasvit.latency_db.transfer import import_table

    url = fresh_postgres_db(postgres_url)
    store = LatencyStore.open(url)
    import_table(store, search_assets["table"])
    store.add_validation(search_assets["device"], search_assets["validation"])
    store.close()
    home = tmp_path_factory.mktemp("postgres-home")
    env = environment(
        home,
        search_assets,
        NASVIT_DATABASE_URL=url,
        NASVIT_READ_ACCESS="token",
        NASVIT_CORS_ORIGINS='["http://dashboard.example"]',
    )
    deployment = Deployment(env=env, home=home)
    try:
        yield start_deployment(deployment)
    finally:
        deployment.stop()
