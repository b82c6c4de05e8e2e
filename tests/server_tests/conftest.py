"""Fixtures for the job service: a small real checkpoint and latency table, `nasvit serve` on a
free loopback port (a real uvicorn subprocess) over SQLite or a real PostgreSQL, and real
`nasvit worker` processes.

Searches stay small: an untrained supernet over a restricted slice of efficientformer at
resolution 32 (as the pipeline tests use), a budget most candidates meet, and a latency table
measured once per session with the quick protocol (PostgreSQL databases get it imported), so a
worker never profiles blocks. Short leases (6 s, heartbeat 1 s) let a killed worker's job be
taken over within seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

NASVIT = shutil.which("nasvit", path=str(Path(sys.executable).parent))
LEASE_SECONDS = "6"
HEARTBEAT_SECONDS = "1"


def _load_latency_db_conftest() -> Any:
    # The PostgreSQL server fixture lives in tests/latency_db_tests/conftest.py. Test folders are
    # not importable packages under --import-mode=importlib (no tests/__init__.py, and the
    # repository root is kept off sys.path), so the file is loaded by path.
    path = Path(__file__).resolve().parents[1] / "latency_db_tests" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_nasvit_latency_db_test_fixtures", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_latency_fixtures = _load_latency_db_conftest()
postgres_url = _latency_fixtures.postgres_url  # session fixture: a throwaway PostgreSQL server
fresh_postgres_db = _latency_fixtures._fresh_postgres_db


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def search_assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A small checkpoint, and its blocks' latency table for this machine, measured and
    validated once into a SQLite database, and exported as JSON (for PostgreSQL databases)."""
    import torch

    from nasvit.evaluation.latency import resolve_device, validate_table
    from nasvit.latency_db import LatencyStore, MeasurementProtocol, build_table, make_profiler
    from nasvit.latency_db.transfer import export_table
    from nasvit.search_spaces import get_space
    from nasvit.training.checkpoint import save_supernet

    folder = tmp_path_factory.mktemp("server-assets")
    space = get_space("efficientformer").restrict(
        resolution=[32],
        widths=[[16, 32], [32, 48], [64, 96], [128, 192]],
        depths=[[1, 2], [1, 2], [1, 2, 3], [1, 2, 3]],
        vit_num=[0, 1, 2],
    )
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


@dataclass
class Deployment:
    """One service: its environment, a running `nasvit serve`, a write token, its workers."""

    env: dict[str, str]
    home: Path
    url: str = ""
    token: str = ""
    server: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)
    logs: Path = Path()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def api(self, path: str) -> str:
        return f"{self.url}/api/v1{path}"

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("headers", self.auth)
        return httpx.get(self.api(path), timeout=30, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("headers", self.auth)
        return httpx.post(self.api(path), timeout=30, **kwargs)

    def submit(self, **body: Any) -> dict[str, Any]:
        response = self.post("/searches", json={"space": "efficientformer", **body})
        assert response.status_code == 202, response.text
        return response.json()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [NASVIT, *args], capture_output=True, text=True, env=self.env, timeout=300
        )

    def start_worker(self, *args: str, name: str | None = None) -> subprocess.Popen:
        name = name or f"worker-{len(self.workers)}"
        log = (self.logs / f"{name}.log").open("w")
        process = subprocess.Popen(
            [NASVIT, "worker", "--poll", "0.2", "--name", name, *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.workers.append(process)
        return process

    def worker_log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()

    def wait_for(
        self, job_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 300
    ) -> dict[str, Any]:
        """Poll the job until ``done(job)``; fails with the job and worker logs on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(f"/searches/{job_id}").json()
            if done(job):
                return job
            if time.monotonic() > deadline:
                logs = {p.name: p.read_text()[-2000:] for p in self.logs.glob("*.log")}
                pytest.fail(f"job never got there: {job}\nlogs: {logs}")
            time.sleep(0.2)

    def wait_finished(self, job_id: str, timeout: float = 300) -> dict[str, Any]:
        finished = ("succeeded", "failed", "cancelled")
        return self.wait_for(job_id, lambda job: job["status"] in finished, timeout)

    def stop(self) -> None:
        for process in [*self.workers, self.server]:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in [*self.workers, self.server]:
            if process is None:
                continue
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _environment(home: Path, assets: dict[str, Any], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NASVIT_")}
    env.update(
        NASVIT_HOME=str(home),
        NASVIT_CHECKPOINTS=json.dumps({"efficientformer": str(assets["checkpoint"])}),
        NASVIT_LEASE_SECONDS=LEASE_SECONDS,
        NASVIT_HEARTBEAT_SECONDS=HEARTBEAT_SECONDS,
        # Two shared cores: one OpenMP thread per process keeps torch from oversubscribing.
        OMP_NUM_THREADS="1",
        **extra,
    )
    return env


def start_deployment(deployment: Deployment) -> Deployment:
    """Start `nasvit serve` on a free port, wait for /health, and create a write token."""
    deployment.logs = deployment.home / "logs"
    deployment.logs.mkdir(exist_ok=True)
    created = deployment.cli("token", "create", "tests")
    assert created.returncode == 0, created.stderr
    deployment.token = created.stdout.strip()
    port = free_port()
    deployment.url = f"http://127.0.0.1:{port}"
    deployment.server = subprocess.Popen(
        [NASVIT, "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env=deployment.env,
        stdout=(deployment.logs / "serve.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while True:
        assert deployment.server.poll() is None, (deployment.logs / "serve.log").read_text()
        try:
            if httpx.get(deployment.api("/health"), timeout=2).status_code == 200:
                return deployment
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "nasvit serve did not come up"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def sqlite_service(
    tmp_path_factory: pytest.TempPathFactory, search_assets: dict[str, Any]
) -> Iterator[Deployment]:
    """The default setup: SQLite under NASVIT_HOME (holding the measured table), public reads."""
    home = tmp_path_factory.mktemp("sqlite-home")
    shutil.copy(search_assets["database"], home / "nasvit.db")
    deployment = Deployment(env=_environment(home, search_assets), home=home)
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
    env = _environment(
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
