"""A running job service for tests: `nasvit serve` on a free loopback port (a real uvicorn
subprocess) with its environment, a write token and real `nasvit worker` processes.

Short leases (6 s, heartbeat 1 s) let a killed worker's job be taken over within seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from nasvit_testing.ports import free_port

#: The console script installed next to this interpreter (None if it is not installed).
NASVIT = shutil.which("nasvit", path=str(Path(sys.executable).parent))
LEASE_SECONDS = "6"
HEARTBEAT_SECONDS = "1"


@contextmanager
def served_in_thread(app: Any) -> Iterator[str]:
    """Serve ``app`` with a real uvicorn on a free loopback port, in a thread of this process
    (so the test can reach the app's services); yields the base URL, stops the server after."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


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


def environment(home: Path, assets: dict[str, Any], **extra: str) -> dict[str, str]:
    """The environment of a service's processes: this one's, less any NASVIT_* variable, plus
    ``home``, the checkpoint of ``assets`` (the server conftest's ``search_assets``), short
    leases and ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NASVIT_") or k == "NASVIT_AUTO_WORKERS"
    }
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
