"""The agent against a real server: uvicorn on loopback over SQLite and PostgreSQL, the agent
running as a separate process from the torch-free venv (the zipapp the server serves).

Work is queued the way the pipeline queues it (:class:`nasvit.latency_db.work.WorkQueue` on the
server's database); the server is told the quick protocol so a table takes seconds. Leases
last 3 s, so the items of a killed agent return to the queue within seconds.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from nasvit.agent.measurement import MeasurementProtocol
from nasvit.latency_db.profilers import (
    OVERHEAD_COPIES,
    export_onnx_bytes,
    onnx_weight_bytes,
    overhead_models,
)
from nasvit.latency_db.replicate import COLD_PROTOCOL
from nasvit.latency_db.work import BlockModel, WorkQueue
from nasvit.nn.blocks import BlockSpec

from nasvit_testing.postgres import fresh_postgres_db
from nasvit_testing.service import served_in_thread
from nasvit_testing.toy_spaces import small_efficientformer

if TYPE_CHECKING:
    from nasvit.latency_db import LatencyStore
    from nasvit.server.services import Services

    from .conftest import AgentVenv

LEASE_SECONDS = 3.0
OVERHEAD_SHAPE = (1, 8, 8, 8)
SPACE = "small-efficientformer"


@dataclass
class Service:
    """A running server, its services (for queueing work on its database) and an API token."""

    url: str
    services: Services
    api_token: str

    @property
    def store(self) -> LatencyStore:
        return self.services.latency_store()

    @property
    def queue(self) -> WorkQueue:
        return WorkQueue(self.store)

    def device_token(self, device: str) -> str:
        response = httpx.post(
            f"{self.url}/api/v1/device-tokens",
            json={"device": device},
            headers={"Authorization": f"Bearer {self.api_token}"},
            timeout=30,
        )
        assert response.status_code == 201, response.text
        token = response.json()["token"]
        assert token.startswith("nsd_")
        return str(token)


@pytest.fixture(params=["sqlite", "postgresql"])
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Service]:
    from nasvit.server.app import create_app
    from nasvit.settings import Settings

    database_url = None
    if request.param == "postgresql":
        database_url = fresh_postgres_db(request.getfixturevalue("postgres_url"))
    settings = Settings(
        home=tmp_path / "home",
        database_url=database_url,
        device_lease_seconds=LEASE_SECONDS,
        agent_poll_seconds=0.2,
    )
    app = create_app(settings)
    services = app.state.services
    services.protocol = MeasurementProtocol.quick()
    services.network_protocol = MeasurementProtocol.quick()
    api_token = services.tokens.create("tests")
    with served_in_thread(app) as url:
        yield Service(url=url, services=services, api_token=api_token)


@pytest.fixture(scope="module")
def blocks() -> list[BlockSpec]:
    """The small space's blocks (42 of them), in enumeration order."""
    return list(small_efficientformer().enumerate_blocks(num_classes=10, in_channels=1))


def block_model(block: BlockSpec) -> BlockModel:
    model = export_onnx_bytes(block.build(), block.input_shape)
    return BlockModel(
        key=block.key,
        kind=block.kind,
        model=model,
        input_shape=tuple(block.input_shape),
        weight_bytes=onnx_weight_bytes(model),
        cold=True,
    )


def register(service: Service, agent_venv: AgentVenv, token: str, *args: str) -> str:
    """Run the agent once on an empty queue (it registers the device, finds nothing to do and
    exits 0); returns the device id."""
    ran = agent_venv.run("--server", service.url, "--token", token, "--once", *args)
    assert ran.returncode == 0, ran.stderr
    assert "registered for device" in ran.stderr and "the queue is empty" in ran.stderr
    return next(d.id for d in service.store.devices() if d.agent_managed)


def enqueue(service: Service, device_id: str, todo: Sequence[BlockSpec]) -> list[str]:
    """Queue the device's overhead (when unknown) and ``todo``'s blocks, as the pipeline does;
    returns their keys."""
    queue = service.queue
    if service.store.device(device_id).overhead_ms is None:
        single, chained = overhead_models(OVERHEAD_SHAPE)
        queue.enqueue_overhead(device_id, single, chained, OVERHEAD_SHAPE, OVERHEAD_COPIES)
    models = [block_model(block) for block in todo]
    reference = models[len(models) // 2]
    assert queue.enqueue_blocks(device_id, models, reference, SPACE) == len(models)
    return [block.key for block in todo]


def assert_table_complete(service: Service, device_id: str, keys: Sequence[str]) -> None:
    """Every key has exactly one entry, warm and cold (streamed), and no work is left."""
    store = service.store
    entries = store.entries(device_id)
    assert sorted(entries) == sorted(keys)
    assert store.entry_count(device_id) == len(keys)  # one row per key: no duplicates
    for key, entry in entries.items():
        assert entry.median_ms > 0 and entry.n >= 1, key
        assert entry.cold_median_ms is not None and entry.cold_median_ms > 0, key
        assert entry.cold_protocol == COLD_PROTOCOL, key
        assert entry.weight_bytes is not None and entry.weight_bytes > 0, key
        assert entry.profiler == "onnxruntime-cpu", key
    summary = service.queue.queue_summary(device_id)
    assert summary["block"].get("queued", 0) == 0 and summary["block"].get("leased", 0) == 0
    assert summary["block"]["done"] == len(keys)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_the_agent_builds_a_device_table_from_the_torch_free_venv(
    service: Service, agent_venv: AgentVenv, blocks: list[BlockSpec]
) -> None:
    token = service.device_token("edge-1")
    device_id = register(service, agent_venv, token)
    device = service.store.device(device_id)
    assert device.name == "edge-1" and device.agent_managed
    versions = agent_venv.run_python("import onnxruntime; print(onnxruntime.__version__)")
    assert device.fingerprint.runtime == "onnxruntime"
    assert device.fingerprint.runtime_version == versions.stdout.strip()
    assert device.fingerprint.provider == "CPUExecutionProvider"
    assert device.fingerprint.clock == "thread"  # one thread on the CPU, as `nasvit profile`

    keys = enqueue(service, device_id, blocks[:8])
    ran = agent_venv.run("--server", service.url, "--token", token, "--once", "--max-items", "4")
    assert ran.returncode == 0, ran.stderr
    assert "Traceback" not in ran.stderr
    assert "measured the per-call overhead" in ran.stderr
    assert ran.stderr.count("timed 4 block(s) (drift") == 2, ran.stderr

    assert service.store.device(device_id).overhead_ms is not None
    assert_table_complete(service, device_id, keys)
    # Each item was timed once: nothing was leased twice.
    assert all(item.attempts == 1 for item in service.queue.items(device_id, "done", 100))


def test_an_agent_killed_mid_batch_leaves_its_items_to_the_next_run(
    service: Service, agent_venv: AgentVenv, blocks: list[BlockSpec], tmp_path: Path
) -> None:
    token = service.device_token("edge-kill")
    device_id = register(service, agent_venv, token)
    keys = enqueue(service, device_id, blocks[8:24])
    store, queue = service.store, service.queue

    def block_status(status: str) -> int:
        return queue.queue_summary(device_id).get("block", {}).get(status, 0)

    args = ("--server", service.url, "--token", token, "--max-items", "4")
    agent = agent_venv.start(tmp_path / "killed.log", *args)
    try:
        # Kill it while it holds a lease of blocks, after at least one batch was recorded and
        # with more than one batch to go (so it is not just uploading its last one).
        wait_until(
            lambda: 0 < store.entry_count(device_id) < len(keys) - 4 and block_status("leased") > 0,
            "a recorded batch and a block lease out",
        )
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    held = [item for item in queue.items(device_id, "leased", 100) if item.kind == "block"]
    recorded = store.entry_count(device_id)
    log = (tmp_path / "killed.log").read_text()
    assert held, "the agent finished its lease before the kill"
    assert 0 < recorded < len(keys), log

    # A new agent takes the dead one's items once their lease ran out, and the rest.
    restarted = agent_venv.run(*args, "--idle-exit", str(3 * LEASE_SECONDS), timeout=300)
    assert restarted.returncode == 0, restarted.stderr
    assert_table_complete(service, device_id, keys)
    again = {item.id: item for item in queue.items(device_id, "done", 100)}
    assert all(again[item.id].attempts == 2 for item in held)
    assert all(item.attempts <= 2 for item in again.values())


def test_two_agents_on_one_device_never_time_the_same_item(
    service: Service, agent_venv: AgentVenv, blocks: list[BlockSpec], tmp_path: Path
) -> None:
    token = service.device_token("edge-pair")
    device_id = register(service, agent_venv, token)
    keys = enqueue(service, device_id, blocks[24:40])
    args = ("--server", service.url, "--token", token, "--max-items", "2", "--idle-exit", "2")
    agents = [
        agent_venv.start(tmp_path / f"agent-{i}.log", *args, "--name", f"pair-{i}")
        for i in range(2)
    ]
    for agent in agents:
        assert agent.wait(timeout=300) == 0
    logs = [(tmp_path / f"agent-{i}.log").read_text() for i in range(2)]
    assert_table_complete(service, device_id, keys)
    done = service.queue.items(device_id, "done", 100)
    assert all(item.attempts == 1 for item in done), logs
    # Both took part (the queue hands out two items at a time, alternately as they ask).
    assert {item.leased_by for item in done if item.kind == "block"} == {"pair-0", "pair-1"}, logs


def test_the_agent_takes_network_readings_with_the_stated_protocol(
    service: Service, agent_venv: AgentVenv, blocks: list[BlockSpec]
) -> None:
    from nasvit.latency_db.work import NetworkJob

    token = service.device_token("edge-net")
    device_id = register(service, agent_venv, token)
    single, chained = overhead_models(OVERHEAD_SHAPE)
    networks = [
        NetworkJob(block_model(blocks[0]).model, tuple(blocks[0].input_shape)),
        NetworkJob(chained, OVERHEAD_SHAPE),
    ]
    one_session = MeasurementProtocol(sessions=1, warmup=1, repeats=4, min_repeats=4, budget_s=0)
    batch = service.queue.enqueue_networks(
        device_id, networks, 2, [[1, 0], [0, 1]], SPACE, protocol=one_session
    )
    ran = agent_venv.run("--server", service.url, "--token", token, "--once")
    assert ran.returncode == 0, ran.stderr
    results = service.queue.network_results(batch)
    assert len(results) == 2
    for readings in results:
        assert readings is not None and len(readings) == 2
        for reading in readings:
            timing: dict[str, Any] = reading["reading"]
            assert timing["sessions"] == 1  # one fresh session per reading
            assert timing["n"] == 4 == len(reading["runs_ms"])  # the stated protocol's runs
            assert all(run > 0 for run in reading["runs_ms"])


def test_a_refused_token_stops_the_agent_with_one_line(
    service: Service, agent_venv: AgentVenv
) -> None:
    for token in ("nsd_not-a-token", service.api_token):
        ran = agent_venv.run("--server", service.url, "--token", token, "--once")
        assert ran.returncode == 2
        lines = ran.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in ran.stderr, ran.stderr
        assert lines[0].startswith("error: the server refused the device token")
    assert service.store.devices() == []  # nothing registered


def test_another_configuration_of_a_registered_device_is_refused(
    service: Service, agent_venv: AgentVenv
) -> None:
    token = service.device_token("edge-config")
    register(service, agent_venv, token)
    ran = agent_venv.run("--server", service.url, "--token", token, "--threads", "2", "--once")
    assert ran.returncode == 2
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in ran.stderr, ran.stderr
    assert lines[0].startswith("error: registration refused") and "threads" in lines[0]


def test_an_expired_lease_is_dropped_and_a_repeated_upload_records_nothing(
    service: Service, agent_venv: AgentVenv, blocks: list[BlockSpec]
) -> None:
    """In-process pieces of the loop against the real server: the heartbeat notices a lease
    that ran out, an upload under it is refused (409), and uploading a lease's results twice
    records them once."""
    from nasvit.agent.client import AgentClient, LeaseConflict
    from nasvit.agent.runner import Agent, AgentOptions, Heartbeat, LeaseLost

    token = service.device_token("edge-lease")
    device_id = register(service, agent_venv, token)
    keys = enqueue(service, device_id, blocks[:4])
    client = AgentClient(service.url, token)
    lines: list[str] = []
    agent = Agent(client, AgentOptions(name="in-process"), log=lines.append)
    agent.register()
    overhead = client.claim(device_id, "in-process", 16)
    assert overhead is not None and [i.kind for i in overhead.items] == ["overhead"]
    assert agent.process(overhead)

    lease = client.claim(device_id, "in-process", 16)
    assert lease is not None and {i.kind for i in lease.items} == {"block"}
    results = agent.measure(lease, lambda: None)
    first = client.upload(device_id, lease.id, results)
    assert (first["recorded"], first["already"]) == (len(keys), 0)
    second = client.upload(device_id, lease.id, results)  # a retry after a lost answer
    assert (second["recorded"], second["already"]) == (0, len(keys))
    assert service.store.entry_count(device_id) == len(keys)

    # A lease left to run out: the heartbeat's next renewal finds it gone.
    more = enqueue(service, device_id, blocks[4:6])
    stale = client.claim(device_id, "in-process", 16)
    assert stale is not None
    time.sleep(LEASE_SECONDS + 0.5)
    with Heartbeat(client, device_id, stale.id, 0.05, lines.append) as heartbeat:
        wait_until(heartbeat.lost.is_set, "the heartbeat to notice the lost lease", 30)
        with pytest.raises(LeaseLost):
            heartbeat.check()
    assert any(f"lease {stale.id} is gone" in line for line in lines)
    with pytest.raises(LeaseConflict):
        client.upload(device_id, stale.id, agent.measure(stale, lambda: None))
    assert sorted(service.store.entries(device_id)) == sorted(keys)  # nothing stored
    # The loop drops such a lease and claims again: its items are there to take.
    again = client.claim(device_id, "in-process", 16)
    assert again is not None and [i.id for i in again.items] == [i.id for i in stale.items]
    assert agent.process(again)
    assert sorted(service.store.entries(device_id)) == sorted([*keys, *more])


def test_an_upload_that_finds_no_server_is_retried_then_given_up(
    service: Service, agent_venv: AgentVenv, blocks: list[BlockSpec]
) -> None:
    from nasvit.agent.client import AgentClient, Lease
    from nasvit.agent.runner import BACKOFF_S, UPLOAD_ATTEMPTS, Agent, AgentOptions

    from nasvit_testing.ports import free_port

    token = service.device_token("edge-retry")
    client = AgentClient(service.url, token)
    waits: list[float] = []
    agent = Agent(client, AgentOptions(name="retry"), log=lambda line: None, sleep=waits.append)
    agent.register()
    agent.client = AgentClient(f"http://127.0.0.1:{free_port()}", token)  # the server is gone
    lease = Lease(id="gone", expires_at="", call_overhead_ms=None, items=())
    result = {"item_id": 1, "overhead": {"median_ms": 0.1}}
    assert agent.upload(lease, [result]) is False
    assert waits == [BACKOFF_S[min(i, len(BACKOFF_S) - 1)] for i in range(UPLOAD_ATTEMPTS - 1)]


def test_sigterm_stops_the_agent_at_once(
    service: Service, agent_venv: AgentVenv, tmp_path: Path
) -> None:
    token = service.device_token("edge-term")
    log = tmp_path / "agent.log"
    agent = agent_venv.start(log, "--server", service.url, "--token", token)
    try:
        wait_until(lambda: "registered for device" in log.read_text(), "the agent to register")
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    text = log.read_text()
    assert "stopped (SIGTERM)" in text and "Traceback" not in text, text


def test_a_model_that_cannot_run_stops_the_agent_after_three_leases(
    service: Service, agent_venv: AgentVenv
) -> None:
    from nasvit.latency_db.work import NetworkJob

    token = service.device_token("edge-broken")
    device_id = register(service, agent_venv, token)
    batch = service.queue.enqueue_networks(
        device_id, [NetworkJob(b"not an onnx model", (1, 3))], 1, [[0]], SPACE
    )
    ran = agent_venv.run("--server", service.url, "--token", token, timeout=120)
    assert ran.returncode == 1
    lines = ran.stderr.strip().splitlines()
    dropped = [line for line in lines if line.endswith("; dropping it")]
    assert len(dropped) == 3 and all("timing failed (InvalidProtobuf" in d for d in dropped)
    assert lines[-1].startswith("error: 3 leases failed in a row; the last: timing failed")
    assert "Traceback" not in ran.stderr
    assert service.queue.network_results(batch) == [None]  # nothing recorded


def test_the_server_serves_the_zipapp_that_runs_in_the_venv(
    service: Service, agent_venv: AgentVenv, tmp_path: Path
) -> None:
    from nasvit.agent.bundle import build_zipapp

    response = httpx.get(f"{service.url}/api/v1/agent.pyz", timeout=30)  # no token needed
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    assert "nasvit-agent.pyz" in response.headers["content-disposition"]
    assert response.content == build_zipapp()
    served = tmp_path / "nasvit-agent.pyz"
    served.write_bytes(response.content)
    helped = subprocess.run(
        [str(agent_venv.python), str(served), "--help"],
        capture_output=True,
        text=True,
        env=agent_venv.env(),
        timeout=120,
    )
    assert helped.returncode == 0 and helped.stdout.startswith("usage: nasvit-agent.pyz")


def test_profiling_an_agent_managed_device_queues_its_blocks_and_follows_the_agent(
    service: Service, agent_venv: AgentVenv, tmp_path: Path
) -> None:
    """`nasvit profile --device NAME` (the Python API under it) against a remote device: the
    missing blocks go to the queue, progress names the device, the agent's timings fill it."""
    import threading

    import nasvit

    token = service.device_token("edge-profile")
    device_id = register(service, agent_venv, token)
    space = small_efficientformer()
    stages: list[tuple[str, int, int]] = []
    outcome: dict[str, Any] = {}

    def profile() -> None:
        try:
            outcome["summary"] = nasvit.profile(
                space,
                device="edge-profile",
                settings=service.services.settings,
                progress=lambda *step: stages.append(step),
                num_classes=10,
                in_channels=1,
            )
        except Exception as error:  # reported by the assertions below
            outcome["error"] = error

    waiting = threading.Thread(target=profile)
    waiting.start()
    # The agent starts once the work is queued, and leaves when none is left.
    wait_until(lambda: bool(service.queue.queue_summary(device_id).get("block")), "the queue")
    agent = agent_venv.start(
        tmp_path / "agent.log", "--server", service.url, "--token", token, "--name", "on-device"
    )
    try:
        waiting.join(timeout=300)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
    assert not waiting.is_alive() and "error" not in outcome, outcome
    summary = outcome["summary"]
    blocks = {b.key for b in space.enumerate_blocks(num_classes=10, in_channels=1)}
    assert summary.device == "edge-profile" and summary.measured == len(blocks)
    assert_table_complete(service, device_id, sorted(blocks))
    assert {stage for stage, _, _ in stages} == {"waiting for device edge-profile: blocks"}
    assert stages[-1][1] == stages[-1][2] == len(blocks)
    # Nothing was measured on this machine: every block item was the agent's.
    done = service.queue.items(device_id, "done", 1000)
    assert {i.kind for i in done} == {"overhead", "block"}
    assert {i.leased_by for i in done} == {"on-device"}
