"""Helpers for tests of the agent endpoints: a service (``create_app`` on a real uvicorn, on
SQLite or PostgreSQL) with an API token, tiny real ONNX models, fingerprints and timings as an
agent sends them, and the queue filled the way the pipeline fills it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from nasvit_testing.service import served_in_thread

SHAPE = (1, 8)


@dataclass
class AgentService:
    """A served app: its URL, an API token, its services, and an HTTP client."""

    url: str
    token: str
    services: Any
    http: httpx.Client

    @property
    def api_auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def store(self) -> Any:
        return self.services.latency_store()

    @property
    def queue(self) -> Any:
        return self.services.work_queue()

    def device_token(self, device: str) -> str:
        response = self.http.post(
            "/api/v1/device-tokens", json={"device": device}, headers=self.api_auth
        )
        assert response.status_code == 201, response.text
        token: str = response.json()["token"]
        return token

    def register(self, device: str, token: str, agent: str = "agent-1", **fields: Any) -> Any:
        return self.http.post(
            "/api/v1/agents/register",
            json={"agent": agent, "fingerprint": fingerprint(device, **fields)},
            headers=bearer(token),
        )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextmanager
def agent_service(
    home: Path, database_url: str | None = None, **settings: Any
) -> Iterator[AgentService]:
    """``create_app`` over ``home`` (and ``database_url``), served on loopback, whatever
    ``NASVIT_*`` the caller's environment holds."""
    from nasvit.server.app import create_app
    from nasvit.settings import Settings

    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("NASVIT_")}
    try:
        app = create_app(Settings(home=home, database_url=database_url, **settings))
    finally:
        os.environ.update(saved)
    services = app.state.services
    token = services.tokens.create(f"tests-{uuid.uuid4().hex[:6]}")
    with served_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        yield AgentService(url, token, services, http)


def fingerprint(device: str, **fields: Any) -> dict[str, Any]:
    """A fingerprint an agent would send, unique to ``device`` (its CPU model says so)."""
    return {
        "cpu_model": f"test CPU of {device}",
        "cores": 4,
        "memory_gib": 8,
        "os": "Linux aarch64",
        "runtime": "onnxruntime",
        "runtime_version": "1.20.0",
        "provider": "CPUExecutionProvider",
        "threads": 1,
        "optimization": "all",
        "precision": "fp32",
        "accelerator": "",
        "batch": 1,
        "cache_bytes": 2**20,
        "clock": "thread",
    } | fields


def tiny_onnx(scale: float, shape: tuple[int, ...] = SHAPE) -> bytes:
    """A real ONNX model (``y = x * w``, ``w`` filled with ``scale``): distinct bytes per scale,
    and one input whose shape the output keeps (so it replicates chained)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full(shape, scale, dtype=np.float32), name="w")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def timing(median_ms: float = 0.5, **fields: Any) -> dict[str, Any]:
    return {
        "median_ms": median_ms,
        "iqr_ms": 0.02,
        "n": 30,
        "sessions": 3,
        "session_medians_ms": [median_ms, median_ms * 1.01, median_ms * 0.99],
    } | fields


def block_key(index: int) -> str:
    from nasvit.nn.blocks import BLOCK_KEY_SCHEMA

    return f"{BLOCK_KEY_SCHEMA}|test_mul|8_{index}"


def enqueue_blocks(
    service: AgentService, device_id: str, count: int, space: str = "tiny", cold: bool = False
) -> list[str]:
    """Queue the device's overhead and ``count`` blocks, as the pipeline does; their keys."""
    from nasvit.latency_db.work import BlockModel

    queue = service.queue
    queue.enqueue_overhead(device_id, tiny_onnx(0.5), tiny_onnx(0.25), SHAPE, 4)
    blocks = [
        BlockModel(block_key(i), "test_mul", tiny_onnx(1.0 + i), SHAPE, 32, cold)
        for i in range(count)
    ]
    reference = BlockModel(block_key(10_000), "test_mul", tiny_onnx(99.0), SHAPE, 32, False)
    queue.enqueue_blocks(device_id, blocks, reference, space)
    return [block.key for block in blocks]


def claim(service: AgentService, device: str, token: str, **body: Any) -> httpx.Response:
    return service.http.post(
        f"/api/v1/devices/{device}/work/leases",
        json={"agent": "agent-1", **body},
        headers=bearer(token),
    )


def upload(
    service: AgentService, device: str, token: str, lease_id: str, results: list[dict[str, Any]]
) -> httpx.Response:
    return service.http.post(
        f"/api/v1/devices/{device}/work/leases/{lease_id}/results",
        json={"results": results},
        headers=bearer(token),
    )


def results_for(lease: dict[str, Any], median_ms: float = 0.5) -> list[dict[str, Any]]:
    """Well-formed results for every item of a lease."""
    results = []
    for item in lease["items"]:
        if item["kind"] == "overhead":
            results.append({"item_id": item["id"], "overhead": timing(0.01)})
        elif item["kind"] == "block":
            cold = timing(median_ms * 1.5) if item["params"].get("cold") else None
            results.append({"item_id": item["id"], "warm": timing(median_ms), "cold": cold})
        else:
            results.append(
                {"item_id": item["id"], "reading": timing(median_ms), "runs_ms": [median_ms] * 5}
            )
    return results


def finish_overhead(service: AgentService, device: str, token: str) -> None:
    """Claim and upload the device's overhead item (blocks wait for it)."""
    lease = claim(service, device, token)
    assert lease.status_code == 201, lease.text
    assert [item["kind"] for item in lease.json()["items"]] == ["overhead"]
    done = upload(service, device, token, lease.json()["lease_id"], results_for(lease.json()))
    assert done.status_code == 200, done.text
