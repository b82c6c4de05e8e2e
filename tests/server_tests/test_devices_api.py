"""The agent side of the service over HTTP: device tokens, registration, leases of work items,
model downloads and result uploads, on ``create_app`` served by a real uvicorn on 127.0.0.1,
over SQLite and over a real PostgreSQL. The queue is filled the way the pipeline fills it
(:class:`nasvit.latency_db.work.WorkQueue`), and the models are real ONNX files.

Every bad request gets a 4xx with a reason and stores nothing: the wrong kind of token,
another device's token, a malformed fingerprint, NaN / negative / zero-run timings, results
for items the lease does not hold, and uploads after the lease ran out.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import threading
import uuid
import zipfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from nasvit_testing.agent_api import (
    AgentService,
    agent_service,
    bearer,
    claim,
    enqueue_blocks,
    fingerprint,
    finish_overhead,
    results_for,
    timing,
    tiny_onnx,
    upload,
)
from nasvit_testing.postgres import fresh_postgres_db
from nasvit_testing.service import NASVIT


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentService]:
    url = None
    if request.param == "postgresql":
        url = fresh_postgres_db(request.getfixturevalue("postgres_url"))
    with agent_service(tmp_path_factory.mktemp(f"agents-{request.param}"), url) as served:
        yield served


def _name() -> str:
    return f"dev-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def device(service: AgentService) -> tuple[str, str]:
    """A registered device: (its name, its device token)."""
    name = _name()
    token = service.device_token(name)
    registered = service.register(name, token)
    assert registered.status_code == 200, registered.text
    return name, token


def _snapshot(service: AgentService, name: str) -> dict[str, Any]:
    """Everything an upload could change on a device."""
    record = service.store.device(name)
    items = service.queue.items(record.id, "leased", 1000) + service.queue.items(
        record.id, "done", 1000
    )
    return {
        "summary": service.queue.queue_summary(record.id),
        "items": sorted((i.id, i.status, json.dumps(i.result, sort_keys=True)) for i in items),
        "entries": service.store.entry_count(record.id),
        "overhead": service.store.device(record.id).overhead_ms,
    }


def _expire(service: AgentService, lease_id: str) -> None:
    """Let a lease run out (its items' expiry moved into the past, as time would)."""
    from sqlalchemy import update

    from nasvit.latency_db.models import WorkItemRow
    from nasvit.sql import utcnow

    with service.store.transaction() as session:
        session.execute(
            update(WorkItemRow)
            .where(WorkItemRow.lease_id == lease_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )


# ---------------------------------------------------------------------- tokens
def test_a_device_token_is_issued_once_and_stored_hashed(service: AgentService) -> None:
    from sqlalchemy import select

    from nasvit.server.db import DeviceTokenRow

    name = _name()
    created = service.http.post(
        "/api/v1/device-tokens", json={"device": name}, headers=service.api_auth
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["device"] == name and body["label"] == name
    assert body["token"].startswith("nsd_") and len(body["token"]) > 40
    second = service.http.post(
        "/api/v1/device-tokens", json={"device": name}, headers=service.api_auth
    )
    assert second.json()["label"] == f"{name}-2" and second.json()["token"] != body["token"]
    with service.services.database.read() as session:
        rows = session.scalars(select(DeviceTokenRow).where(DeviceTokenRow.device == name)).all()
        stored = [(row.name, row.sha256) for row in rows]
    digest = hashlib.sha256(body["token"].encode()).hexdigest()
    assert (name, digest) in stored and all(body["token"] not in s for _, s in stored)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"device": "two words"}, "device: String should match pattern"),
        ({"device": ""}, "device: String should have at least 1 character"),
        ({"device": "x" * 201}, "device: String should have at most 200 characters"),
        ({"device": "pi", "owner": "me"}, "owner: Extra inputs are not permitted"),
        ({"device": 7}, "device: Input should be a valid string"),
        ({}, "device: Field required"),
    ],
)
def test_a_bad_device_token_request_is_refused(
    service: AgentService, body: dict[str, Any], message: str
) -> None:
    before = len(service.services.device_tokens.list())
    response = service.http.post("/api/v1/device-tokens", json=body, headers=service.api_auth)
    assert response.status_code == 422 and message in response.json()["detail"], response.text
    assert len(service.services.device_tokens.list()) == before


def test_each_kind_of_token_works_only_where_it_belongs(
    service: AgentService, device: tuple[str, str]
) -> None:
    name, token = device
    other = _name()
    other_token = service.device_token(other)
    assert service.register(other, other_token).status_code == 200
    work = f"/api/v1/devices/{name}/work"

    def detail(response: httpx.Response, status: int) -> str:
        assert response.status_code == status, response.text
        reason: str = response.json()["detail"]
        return reason

    # A device token is not an API token, on writes nor (with token reads) anywhere else.
    search = service.http.post(
        "/api/v1/searches",
        json={"space": "efficientformer", "budget": "2ms"},
        headers=bearer(token),
    )
    assert "a device token only works on its device's agent endpoints" in detail(search, 401)
    tokens = service.http.post("/api/v1/device-tokens", json={"device": "x"}, headers=bearer(token))
    assert "needs an API token" in detail(tokens, 401)
    # An API token is not a device token.
    assert "an API token is not a device token" in detail(
        service.http.get(work, headers=service.api_auth), 401
    )
    assert "missing device token" in detail(service.http.get(work), 401)
    assert "invalid or revoked device token" in detail(
        service.http.get(work, headers=bearer("nsd_" + "x" * 43)), 401
    )
    # Another device's token: 403, naming the device it belongs to, by name or by id.
    other_id = service.store.device(other).id
    for path in (f"/api/v1/devices/{other}/work", f"/api/v1/devices/{other_id}/work"):
        refused = service.http.get(path, headers=bearer(token))
        assert detail(refused, 403) == f"this device token belongs to device '{name}'"
    assert service.http.get(work, headers=bearer(token)).status_code == 200
    # Revoked: 401 from then on.
    label = service.services.device_tokens.list(other)[0].name
    service.services.device_tokens.revoke(label)
    revoked = service.http.get(f"/api/v1/devices/{other}/work", headers=bearer(other_token))
    assert "invalid or revoked device token" in detail(revoked, 401)


# ---------------------------------------------------------------------- registration
def test_registration_creates_an_agent_managed_device(service: AgentService) -> None:
    name = _name()
    token = service.device_token(name)
    registered = service.register(name, token, agent="pi-agent")
    assert registered.status_code == 200, registered.text
    config = registered.json()
    record = service.store.device(name)
    assert config["device"] == name and config["device_id"] == record.id
    assert record.agent_managed and record.last_agent == "pi-agent"
    assert record.fingerprint.to_dict() == fingerprint(name)
    settings = service.services.settings
    assert config["lease_seconds"] == settings.device_lease_seconds
    assert config["poll_seconds"] == settings.agent_poll_seconds
    assert config["protocol"]["sessions"] >= 1 and config["network_protocol"]["repeats"] >= 1
    assert (config["drift_tolerance"], config["max_remeasures"]) == (0.05, 2)
    # Registering again (an agent restarted) is fine and names the new agent.
    again = service.register(name, token, agent="pi-agent-2")
    assert again.status_code == 200 and again.json()["device_id"] == record.id
    assert service.store.device(name).last_agent == "pi-agent-2"
    listed = {d["name"]: d for d in service.http.get("/api/v1/devices").json()}[name]
    assert listed["agent_managed"] is True and listed["status"] == "online"
    assert listed["last_agent"] == "pi-agent-2" and listed["last_seen_at"] is not None


def test_a_name_or_fingerprint_registered_otherwise_is_a_conflict(
    service: AgentService, device: tuple[str, str]
) -> None:
    name, token = device
    devices = len(service.store.devices())
    changed = service.register(name, token, threads=4, provider="CUDAExecutionProvider")
    assert changed.status_code == 409, changed.text
    assert "differing: provider, threads" in changed.json()["detail"]
    # The same hardware and settings under another name: it is that device already.
    alias = _name()
    taken = service.register(alias, service.device_token(alias), cpu_model=f"test CPU of {name}")
    assert taken.status_code == 409
    assert f"this fingerprint is device '{name}' already" in taken.json()["detail"]
    assert len(service.store.devices()) == devices
    assert service.store.device(name).fingerprint.to_dict() == fingerprint(name)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"gpu": "A100"}, "fingerprint.gpu: Extra inputs are not permitted"),
        ({"cores": "4"}, "fingerprint.cores: Input should be a valid integer"),
        ({"cores": 4.5}, "fingerprint.cores: Input should be a valid integer"),
        ({"cores": 0}, "fingerprint.cores: Input should be greater than or equal to 1"),
        ({"threads": True}, "fingerprint.threads: Input should be a valid integer"),
        ({"cache_bytes": -1}, "fingerprint.cache_bytes: Input should be greater than or equal"),
        ({"cpu_model": ""}, "fingerprint.cpu_model: String should have at least 1 character"),
        ({"runtime_version": 1.2}, "fingerprint.runtime_version: Input should be a valid string"),
        ({"clock": "sundial"}, "fingerprint.clock: Input should be 'wall' or 'thread'"),
        ({"cpu_model": None}, "fingerprint.cpu_model: Input should be a valid string"),
    ],
)
def test_a_malformed_fingerprint_is_refused_and_registers_nothing(
    service: AgentService, change: dict[str, Any], message: str
) -> None:
    name = _name()
    token = service.device_token(name)
    refused = service.register(name, token, **change)
    assert refused.status_code == 422, refused.text
    assert message in refused.json()["detail"]
    missing = fingerprint(name)
    del missing["os"]
    refused = service.http.post(
        "/api/v1/agents/register",
        json={"agent": "a", "fingerprint": missing},
        headers=bearer(token),
    )
    assert refused.status_code == 422 and "fingerprint.os: Field required" in refused.text
    assert name not in {d.name for d in service.store.devices()}


# ---------------------------------------------------------------------- the work loop
def test_an_agent_claims_downloads_and_uploads_its_work(
    service: AgentService, device: tuple[str, str]
) -> None:
    import onnx

    name, token = device
    record = service.store.device(name)
    keys = enqueue_blocks(service, record.id, 5, space="tiny", cold=True)
    # Blocks wait for the overhead, which is leased alone (one kind per lease).
    lease = claim(service, name, token, max_items=10)
    assert lease.status_code == 201, lease.text
    [overhead] = lease.json()["items"]
    assert overhead["kind"] == "overhead" and overhead["params"] == {"copies": 4}
    model = service.http.get(
        f"/api/v1/devices/{name}/work/models/{overhead['model_sha256']}", headers=bearer(token)
    )
    assert model.status_code == 200 and model.content == tiny_onnx(0.5)
    assert model.headers["content-type"] == "application/octet-stream"
    chained = service.http.get(
        f"/api/v1/devices/{name}/work/models/{overhead['extra_sha256']}", headers=bearer(token)
    )
    assert chained.content == tiny_onnx(0.25)
    recorded = upload(service, name, token, lease.json()["lease_id"], results_for(lease.json()))
    assert recorded.json() == {"recorded": 1, "already": 0, "inserted_entries": 0}
    assert service.store.device(name).overhead_ms == pytest.approx(0.01)

    blocks = claim(service, name, token, max_items=3).json()
    assert [item["kind"] for item in blocks["items"]] == ["block"] * 3
    assert blocks["call_overhead_ms"] == pytest.approx(0.01)
    assert [item["key"] for item in blocks["items"]] == keys[:3]
    first = blocks["items"][0]
    assert first["params"]["cold"] is True and first["reference_sha256"]
    # A streamed timing's model: copies of the block, each with its own weights.
    replicated = service.http.get(
        f"/api/v1/devices/{name}/work/models/{first['model_sha256']}",
        params={"copies": 3},
        headers=bearer(token),
    )
    graph = onnx.load_from_string(replicated.content).graph
    assert len(graph.node) == 3 and len(graph.initializer) == 3
    results = results_for(blocks, median_ms=0.25)
    done = upload(service, name, token, blocks["lease_id"], results)
    assert done.json() == {"recorded": 3, "already": 0, "inserted_entries": 3}
    # The same upload again (its answer was lost): recorded once, nothing new.
    again = upload(service, name, token, blocks["lease_id"], results)
    assert again.status_code == 200 and again.json()["already"] == 3
    assert again.json()["recorded"] == 0
    entries = service.store.entries(record.id)
    assert sorted(entries) == sorted(keys[:3])
    entry = entries[keys[0]]
    assert (entry.median_ms, entry.n, entry.cold_median_ms) == (0.25, 30, 0.375)
    assert entry.profiler == "onnxruntime-cpu" and entry.runtime_version == "1.20.0"

    work = service.http.get(f"/api/v1/devices/{name}/work", headers=bearer(token)).json()
    assert work["summary"] == {"overhead": {"done": 1}, "block": {"done": 3, "queued": 2}}
    assert [item["key"] for item in work["items"]] == keys[3:]
    assert {item["status"] for item in work["items"]} == {"queued"}
    listed = {d["name"]: d for d in service.http.get("/api/v1/devices").json()}[name]
    assert listed["coverage"] == {"tiny": {"done": 3, "total": 5}}
    assert listed["queue"] == work["summary"] and listed["entries"] == 3

    rest = claim(service, name, token).json()
    assert upload(service, name, token, rest["lease_id"], results_for(rest)).status_code == 200
    idle = claim(service, name, token, agent="idle-agent")
    assert idle.status_code == 204 and idle.content == b""
    assert service.store.device(name).last_agent == "idle-agent"  # an idle agent is alive
    # Every model is gone once no unfinished item needs it.
    gone = service.http.get(
        f"/api/v1/devices/{name}/work/models/{first['model_sha256']}", headers=bearer(token)
    )
    assert gone.status_code == 404


def test_a_lease_is_renewed_until_it_runs_out(
    service: AgentService, device: tuple[str, str]
) -> None:
    name, token = device
    enqueue_blocks(service, service.store.device(name).id, 2)
    lease = claim(service, name, token).json()
    path = f"/api/v1/devices/{name}/work/leases/{lease['lease_id']}/renew"
    renewed = service.http.post(path, headers=bearer(token))
    assert renewed.status_code == 200 and renewed.json()["expires_at"] >= lease["expires_at"]
    _expire(service, lease["lease_id"])
    expired = service.http.post(path, headers=bearer(token))
    assert expired.status_code == 409 and "expired" in expired.json()["detail"]
    unknown = service.http.post(
        f"/api/v1/devices/{name}/work/leases/{'0' * 32}/renew", headers=bearer(token)
    )
    assert unknown.status_code == 409
    bad_id = service.http.post(
        f"/api/v1/devices/{name}/work/leases/not%20a%20lease/renew", headers=bearer(token)
    )
    assert bad_id.status_code == 422 and "lease_id" in bad_id.json()["detail"]


def _bad(result: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    changed = json.loads(json.dumps(result))
    target = changed
    for part in path[:-1]:
        target = target[part]
    if value is _DROP:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return changed


_DROP = object()
BAD_BLOCK_RESULTS = [
    (("warm", "median_ms"), -0.5, "warm.median_ms: Input should be greater than 0"),
    (("warm", "median_ms"), 0, "warm.median_ms: Input should be greater than 0"),
    (("warm", "iqr_ms"), -0.01, "warm.iqr_ms: Input should be greater than or equal to 0"),
    (("warm", "n"), 0, "warm.n: Input should be greater than or equal to 1"),
    (("warm", "n"), 2.5, "warm.n: Input should be a valid integer"),
    (("warm", "sessions"), 0, "warm.sessions: Input should be greater than or equal to 1"),
    (("warm", "session_medians_ms"), [], "warm.session_medians_ms: List should have at least 1"),
    (("warm", "session_medians_ms"), [0.5, -1], "session_medians_ms.1: Input should be greater"),
    (("warm", "median_ms"), "0.5", "warm.median_ms: Input should be a valid number"),
    (("warm", "flops"), 3, "warm.flops: Extra inputs are not permitted"),
    (("cold",), _DROP, "lacks the cold timing its block asked for"),
    (("warm",), _DROP, "a result has 'warm' (a block), 'overhead' or 'reading'"),
    (("item_id",), "1", "item_id: Input should be a valid integer"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD_BLOCK_RESULTS)
def test_a_malformed_result_is_refused_and_stores_nothing(
    service: AgentService,
    device: tuple[str, str],
    path: tuple[str, ...],
    value: Any,
    message: str,
) -> None:
    name, token = device
    enqueue_blocks(service, service.store.device(name).id, 3, cold=True)
    finish_overhead(service, name, token)
    lease = claim(service, name, token).json()
    results = results_for(lease)
    results[1] = _bad(results[1], path, value)  # the others are fine: all or nothing
    before = _snapshot(service, name)
    refused = upload(service, name, token, lease["lease_id"], results)
    assert refused.status_code == 422, refused.text
    assert message in refused.json()["detail"]
    assert _snapshot(service, name) == before


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_timings_are_refused(
    service: AgentService, device: tuple[str, str], number: str
) -> None:
    name, token = device
    enqueue_blocks(service, service.store.device(name).id, 1)
    finish_overhead(service, name, token)
    lease = claim(service, name, token).json()
    body = json.dumps({"results": results_for(lease)}).replace("0.5,", f"{number},", 1)
    before = _snapshot(service, name)
    refused = service.http.post(
        f"/api/v1/devices/{name}/work/leases/{lease['lease_id']}/results",
        content=body,
        headers={**bearer(token), "Content-Type": "application/json"},
    )
    assert refused.status_code == 422, refused.text
    assert "median_ms: Input should be a finite number" in refused.json()["detail"]
    assert _snapshot(service, name) == before


def test_results_the_server_never_asked_for_are_refused(
    service: AgentService, device: tuple[str, str]
) -> None:
    name, token = device
    record = service.store.device(name)
    enqueue_blocks(service, record.id, 4)
    finish_overhead(service, name, token)
    lease = claim(service, name, token, max_items=2).json()
    outside = service.queue.items(record.id, "queued", 10)[0].id  # queued, in no lease
    cases = [
        ([*results_for(lease), {"item_id": outside, "warm": timing()}], 409, f"[{outside}]"),
        ([*results_for(lease), {"item_id": 10**12, "warm": timing()}], 409, "not in lease"),
        ([results_for(lease)[0], results_for(lease)[0]], 422, "more than once"),
        # A network's result for a block: the wrong shape for the item.
        ([{"item_id": lease["items"][0]["id"], "reading": timing(), "runs_ms": [1.0]}], 422, ""),
        ([], 422, "results: List should have at least 1 item"),
    ]
    for results, status, message in cases:
        before = _snapshot(service, name)
        refused = upload(service, name, token, lease["lease_id"], results)
        assert refused.status_code == status, refused.text
        assert message in refused.json()["detail"]
        assert _snapshot(service, name) == before
    # Another device's agent cannot upload into this lease, nor under its own token.
    other = _name()
    other_token = service.device_token(other)
    service.register(other, other_token)
    foreign = upload(service, name, other_token, lease["lease_id"], results_for(lease))
    assert foreign.status_code == 403
    crossed = upload(service, other, other_token, lease["lease_id"], results_for(lease))
    assert crossed.status_code == 409
    assert upload(service, name, token, lease["lease_id"], results_for(lease)).status_code == 200


def test_an_upload_after_the_lease_ran_out_stores_nothing(
    service: AgentService, device: tuple[str, str]
) -> None:
    name, token = device
    enqueue_blocks(service, service.store.device(name).id, 2)
    finish_overhead(service, name, token)
    lease = claim(service, name, token).json()
    _expire(service, lease["lease_id"])
    before = _snapshot(service, name)
    late = upload(service, name, token, lease["lease_id"], results_for(lease))
    assert late.status_code == 409 and "expired" in late.json()["detail"]
    assert _snapshot(service, name) == before
    # The items go to the next claim, whose upload counts.
    again = claim(service, name, token, agent="agent-2").json()
    assert [i["id"] for i in again["items"]] == [i["id"] for i in lease["items"]]
    assert upload(service, name, token, again["lease_id"], results_for(again)).status_code == 200
    stale = upload(service, name, token, lease["lease_id"], results_for(lease))
    assert stale.status_code == 409


def test_two_agents_never_lease_the_same_item(
    service: AgentService, device: tuple[str, str]
) -> None:
    name, token = device
    record = service.store.device(name)
    enqueue_blocks(service, record.id, 40)
    finish_overhead(service, name, token)
    leased: list[list[int]] = []
    failures: list[str] = []

    def agent(number: int) -> None:
        with httpx.Client(base_url=service.url, timeout=60) as http:
            while True:
                response = http.post(
                    f"/api/v1/devices/{name}/work/leases",
                    json={"agent": f"agent-{number}", "max_items": 3},
                    headers=bearer(token),
                )
                if response.status_code == 204:
                    return
                if response.status_code != 201:
                    failures.append(response.text)
                    return
                leased.append([item["id"] for item in response.json()["items"]])

    threads = [threading.Thread(target=agent, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == []
    ids = [i for lease in leased for i in lease]
    assert len(ids) == len(set(ids)) == 40
    assert service.queue.queue_summary(record.id)["block"] == {"leased": 40}


def test_a_device_uploads_measurements_for_itself_only(
    service: AgentService, device: tuple[str, str]
) -> None:
    from nasvit.nn.blocks import BLOCK_KEY_SCHEMA

    name, token = device
    other = _name()
    service.register(other, service.device_token(other))
    body = {
        "entries": [{"key": f"{BLOCK_KEY_SCHEMA}|k|1", "median_ms": 1.0, "iqr_ms": 0.1, "n": 5}]
    }
    own = service.http.post(
        f"/api/v1/devices/{name}/measurements", json=body, headers=bearer(token)
    )
    assert own.status_code == 200 and own.json()["inserted"] == 1
    foreign = service.http.post(
        f"/api/v1/devices/{other}/measurements", json=body, headers=bearer(token)
    )
    assert foreign.status_code == 403
    assert service.store.entry_count(service.store.device(other).id) == 0
    # An API token still uploads for any device.
    by_api = service.http.post(
        f"/api/v1/devices/{other}/measurements", json=body, headers=service.api_auth
    )
    assert by_api.status_code == 200 and by_api.json()["inserted"] == 1


def test_work_endpoints_refuse_an_unregistered_or_unknown_device(service: AgentService) -> None:
    name = _name()
    token = service.device_token(name)
    unregistered = claim(service, name, token)
    assert unregistered.status_code == 404 and "not registered yet" in unregistered.text
    model = service.http.get(
        f"/api/v1/devices/{name}/work/models/{'a' * 64}", headers=bearer(token)
    )
    assert model.status_code == 404
    service.register(name, token)
    unknown_model = service.http.get(
        f"/api/v1/devices/{name}/work/models/{'a' * 64}", headers=bearer(token)
    )
    assert unknown_model.status_code == 404
    for bad in ("A" * 64, "a" * 63, "../etc"):
        response = service.http.get(
            f"/api/v1/devices/{name}/work/models/{bad}", headers=bearer(token)
        )
        assert response.status_code in (404, 422)
    too_many = service.http.get(
        f"/api/v1/devices/{name}/work/models/{'a' * 64}",
        params={"copies": 65},
        headers=bearer(token),
    )
    assert too_many.status_code == 422 and "copies" in too_many.json()["detail"]
    for body in ({"agent": "a", "max_items": 0}, {"agent": "a", "max_items": 257}, {"agent": ""}):
        refused = claim(service, name, token, **body)
        assert refused.status_code == 422, refused.text


def test_the_agent_bundle_is_served_to_anyone(service: AgentService) -> None:
    served = httpx.get(f"{service.url}/api/v1/agent.pyz", timeout=60)
    assert served.status_code == 200, served.text
    assert served.headers["content-type"] == "application/zip"
    assert 'filename="nasvit-agent.pyz"' in served.headers["content-disposition"]
    names = zipfile.ZipFile(io.BytesIO(served.content)).namelist()
    assert "__main__.py" in names and "nasvit/agent/client.py" in names


def test_the_service_migrations_create_exactly_the_orm_schema(service: AgentService) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from nasvit.server.db import VERSION_TABLE, Base

    ours = set(Base.metadata.tables)

    def include(obj: Any, name: str | None, type_: str, reflected: bool, _other: Any) -> bool:
        # The latency store shares the database; its tables are its own migrations' concern.
        table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", None)
        return name != VERSION_TABLE and (table is None or table in ours)

    with service.services.database.write_engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "include_object": include}
        )
        assert compare_metadata(context, Base.metadata) == []


def test_the_cli_issues_lists_and_revokes_device_tokens(tmp_path: Path) -> None:
    from nasvit.server.db import Database
    from nasvit.server.jobs import DeviceTokenStore

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NASVIT_") or k == "NASVIT_AUTO_WORKERS"
    }
    env["NASVIT_HOME"] = str(tmp_path)

    def nasvit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [NASVIT, "device", *args], capture_output=True, text=True, env=env, timeout=120
        )

    added = nasvit("add", "pi-5")
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert token.startswith("nsd_") and "\n" not in token
    database = Database.open(f"sqlite:///{tmp_path / 'nasvit.db'}")
    store = DeviceTokenStore(database)
    try:
        assert store.verify(token) == "pi-5"
        assert nasvit("add", "pi-5", "--label", "spare").returncode == 0
        listing = nasvit("list")
        assert listing.returncode == 0 and "spare" in listing.stdout and "pi-5" in listing.stdout
        assert nasvit("revoke", "pi-5").returncode == 0
        assert store.verify(token) is None
        bad = nasvit("add", "two words")
        assert bad.returncode == 2 and "cannot have a device token" in bad.stderr
        assert "Traceback" not in bad.stderr
        unknown = nasvit("revoke", "nope")
        assert unknown.returncode == 2 and "unknown device token 'nope'" in unknown.stderr
    finally:
        database.close()
