"""Fixtures for the job service: a small real checkpoint and latency table, and deployments
(nasvit_testing.service) over SQLite or a real PostgreSQL (the nasvit_testing.postgres plugin).

Searches stay small: an untrained supernet over a restricted slice of efficientformer at
resolution 32 (as the pipeline tests use), a budget most candidates meet, and a latency table
measured once per session with the quick protocol (``search_assets``, from the
nasvit_testing.assets plugin; PostgreSQL databases get it imported), so a worker never profiles
blocks.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from nasvit_testing.postgres import fresh_postgres_db
from nasvit_testing.service import Deployment, environment, start_deployment


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
