"""A search that targets a remote device, end to end, with every part real: `nasvit serve` and
`nasvit worker` processes, the agent from the torch-free venv (the zipapp downloaded from the
server, as a device gets it), and `nasvit search --server ... --device ...` following the job.

The device's blocks, its validation networks and the final candidates are all timed by the
agent: the work items of those kinds, done, name the agent that leased them. The server tells
agents the quick protocol (``NASVIT_AGENT_PROTOCOL=quick``) so the table takes seconds.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from nasvit_testing.service import NASVIT, Deployment, environment, start_deployment
from nasvit_testing.toy_spaces import small_efficientformer

if TYPE_CHECKING:
    from .conftest import AgentVenv

DEVICE = "edge"
AGENT = "edge-agent"


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A small untrained checkpoint (10 classes, 1 channel: the digits the search uses)."""
    import torch

    from nasvit.training.checkpoint import save_supernet

    folder = tmp_path_factory.mktemp("remote-assets")
    space = small_efficientformer()
    torch.manual_seed(0)
    supernet = space.build_supernet(num_classes=10, in_channels=1)
    return {"checkpoint": save_supernet(folder / "tiny.pt", space, supernet)}


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, assets: dict[str, Any]
) -> Iterator[Deployment]:
    home = tmp_path_factory.mktemp("remote-home")
    env = environment(
        home,
        assets,
        NASVIT_AGENT_PROTOCOL="quick",
        NASVIT_DEVICE_LEASE_SECONDS="5",
        NASVIT_AGENT_POLL_SECONDS="0.2",
    )
    service = Deployment(env=env, home=home)
    try:
        yield start_deployment(service)
    finally:
        service.stop()


def _device_token(service: Deployment, name: str) -> str:
    added = service.cli("device", "add", name)
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip().splitlines()[-1]
    assert token.startswith("nsd_")
    return token


def _served_agent(service: Deployment, folder: Path) -> Path:
    """The zipapp as a device gets it: downloaded from the server."""
    response = httpx.get(service.api("/agent.pyz"), timeout=30)
    assert response.status_code == 200
    path = folder / "nasvit-agent.pyz"
    path.write_bytes(response.content)
    return path


def _wait(condition: Any, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _device(service: Deployment, name: str) -> dict[str, Any] | None:
    devices = service.get("/devices").json()
    return next((d for d in devices if d["name"] == name), None)


def test_a_search_for_a_remote_device_is_measured_by_its_agent(
    deployment: Deployment, agent_venv: AgentVenv, tmp_path: Path
) -> None:
    from sqlalchemy import select

    from nasvit.latency_db import LatencyStore
    from nasvit.latency_db.models import WorkItemRow

    service = deployment
    token = _device_token(service, DEVICE)
    bundle = _served_agent(service, tmp_path)
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        agent = subprocess.Popen(
            [
                str(agent_venv.python),
                str(bundle),
                "--server",
                service.url,
                "--token",
                token,
                "--name",
                AGENT,
            ],  # fmt: skip
            stdout=out,
            stderr=subprocess.STDOUT,
            env=agent_venv.env(),
        )
    worker = service.start_worker()
    try:
        _wait(lambda: (_device(service, DEVICE) or {}).get("agent_managed"), "registration")
        out_dir = tmp_path / "result"
        searched = subprocess.run(
            [
                str(NASVIT),
                "search",
                "--server",
                service.url,
                "--token",
                service.token,
                "--space",
                "efficientformer",
                "--device",
                DEVICE,
                "--budget",
                "100ms",
                "--evaluations",
                "8",
                "--out",
                str(out_dir),
            ],  # fmt: skip
            capture_output=True,
            text=True,
            env=service.env,
            timeout=900,
        )
        assert searched.returncode == 0, searched.stderr + "\n" + log.read_text()[-3000:]
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    # The CLI followed the job: the wait for the device said what it waited for.
    assert f"waiting for device {DEVICE}: " in searched.stderr
    assert " blocks" in searched.stderr and "end-to-end readings" in searched.stderr
    report = json.loads((out_dir / "report.json").read_text())
    assert report["device"] == DEVICE
    assert (out_dir / "best.onnx").stat().st_size > 0
    # The chosen subnet meets the budget as measured on the device.
    best = report["best"]
    assert best["measured_ms"] <= report["budget_ms"]
    chosen = [m for m in report["end_to_end"] if m["short"] == best["short"]]
    assert chosen and chosen[0]["fits_budget"] and len(chosen[0]["readings_ms"]) == 3
    # Every measurement was the agent's: blocks, validation readings and end-to-end readings.
    store = LatencyStore.open(service.env.get("NASVIT_DATABASE_URL") or
                              f"sqlite:///{service.home / 'nasvit.db'}")  # fmt: skip
    try:
        record = store.device(DEVICE)
        assert record.agent_managed and record.last_agent == AGENT
        with store.transaction() as session:
            query = select(WorkItemRow).where(WorkItemRow.device_id == record.id)
            rows = list(session.scalars(query))
            done = {(row.kind, row.status, row.leased_by) for row in rows}
            networks = sum(1 for row in rows if row.kind == "network")
        assert {kind for kind, _, _ in done} == {"overhead", "block", "network"}
        assert all(status == "done" and by == AGENT for _, status, by in done), done
        validation = store.latest_validation(record.id)
        assert validation is not None and validation.error_model is not None
        validated = len(validation.details["networks"]) * validation.details["readings"]
        end_to_end = sum(len(m["readings_ms"]) for m in report["end_to_end"])
        assert networks == validated + end_to_end
    finally:
        store.close()


def test_a_device_that_stays_silent_fails_the_search_with_its_name(
    assets: dict[str, Any], agent_venv: AgentVenv, tmp_path_factory: pytest.TempPathFactory
) -> None:
    home = tmp_path_factory.mktemp("silent-home")
    env = environment(home, assets, NASVIT_DEVICE_TIMEOUT_SECONDS="3")
    service = start_deployment(Deployment(env=env, home=home))
    try:
        token = _device_token(service, "quiet")
        # The agent registers the device, finds no work and leaves: the device goes silent.
        ran = agent_venv.run("--server", service.url, "--token", token, "--once")
        assert ran.returncode == 0, ran.stderr
        job = service.submit(budget="100ms", device="quiet", evaluations=4)
        service.start_worker()
        finished = service.wait_finished(job["id"], timeout=300)
    finally:
        service.stop()
    assert finished["status"] == "failed"
    assert "device 'quiet' has not been seen for" in finished["error"]
    assert "nasvit agent" in finished["error"]
