"""The job service end to end: `nasvit serve` (real uvicorn on 127.0.0.1) and `nasvit worker`
processes over SQLite and a real PostgreSQL, driven over HTTP with httpx.

Covers: a worker killed with SIGKILL mid-search and its job finished by another worker with no
finished trial lost; results (front, dominated flags, hypervolume, ONNX) served as the pipeline
computed them; cancellation; two workers sharing one queue; exclusive claims under concurrency;
tokens; and every kind of bad input answered with a 4xx and a reason, never a 500.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from nasvit.searching.pareto import dominates, hypervolume, non_dominated_mask, pareto_front
from nasvit.server.results import pareto_summary

from nasvit_testing.postgres import fresh_postgres_db
from nasvit_testing.service import NASVIT, Deployment

BUDGET = "300us"
BUDGET_MS = 0.3

pytestmark = pytest.mark.slow


def _complete_lines(path: Path) -> list[str]:
    """The trial lines fully written to ``path`` (a torn last line is not a finished trial)."""
    text = path.read_text()
    return text[: text.rfind("\n") + 1].splitlines()


def evaluated(count: int) -> Any:
    """A wait condition: at least ``count`` candidates evaluated (not another stage's steps)."""
    return lambda job: (
        job["progress"]["stage"] == "evaluating candidates" and job["progress"]["done"] >= count
    )


# ---------------------------------------------------------------------- kill -9 and resume
@pytest.fixture(scope="module")
def resumed_job(sqlite_service: Deployment) -> dict[str, Any]:
    """A 48-candidate search whose first worker is SIGKILLed after its first batch; a second
    worker takes the job over once the lease expires and finishes it."""
    service = sqlite_service
    job = service.submit(budget=BUDGET, evaluations=48)
    doomed = service.start_worker(name="doomed")
    running = service.wait_for(job["id"], evaluated(16))
    seen_while_running = service.get(f"/searches/{job['id']}/trials").json()["total"]
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    trials_path = service.home / "jobs" / job["id"] / "trials.jsonl"
    before = _complete_lines(trials_path)
    after_kill = service.get(f"/searches/{job['id']}").json()

    rescuer = service.start_worker(name="rescuer")
    finished = service.wait_finished(job["id"])
    rescuer.send_signal(signal.SIGTERM)  # a worker between jobs exits cleanly
    return {
        "id": job["id"],
        "running": running,
        "seen_while_running": seen_while_running,
        "after_kill": after_kill,
        "before": before,
        "after": trials_path.read_text().splitlines(),
        "finished": finished,
        "rescuer_exit": rescuer.wait(timeout=60),
    }


def test_a_killed_workers_job_is_resumed_without_losing_trials(resumed_job) -> None:
    assert resumed_job["running"]["status"] == "running"
    assert resumed_job["seen_while_running"] >= 16  # points are served while the job runs
    assert resumed_job["after_kill"]["status"] == "running"  # until its lease runs out
    assert resumed_job["after_kill"]["worker"] == "doomed"
    finished, before, after = resumed_job["finished"], resumed_job["before"], resumed_job["after"]
    assert finished["status"] == "succeeded", finished
    assert finished["worker"] == "rescuer" and finished["attempt"] == 2
    assert 16 <= len(before) < 48
    assert after[: len(before)] == before  # every trial finished before the kill is kept as is
    trials = [json.loads(line) for line in after]
    assert [t["index"] for t in trials] == list(range(48))
    assert len({t["short"] for t in trials}) == 48  # nothing evaluated twice
    # The last stage: the chosen candidate's end-to-end readings (an export and 3 readings).
    progress = finished["progress"]
    assert progress["stage"] == "measuring end to end" and progress["fraction"] == 1.0
    assert resumed_job["rescuer_exit"] == 0


def test_results_are_served_as_the_pipeline_computed_them(
    sqlite_service: Deployment, resumed_job, tmp_path: Path
) -> None:
    from nasvit.onnx_export import run_onnx

    service, job_id = sqlite_service, resumed_job["id"]
    report = service.get(f"/searches/{job_id}/artifacts/report.json").json()
    assert report["resumed_from"] == len(resumed_job["before"])
    trials = service.get(f"/searches/{job_id}/trials", params={"limit": 1000}).json()
    assert trials["total"] == 48 and len(trials["items"]) == 48
    items = trials["items"]
    points = [(t["score"], t["predicted_ms"]) for t in items]
    free = set(pareto_front(points))
    assert [not t["dominated"] for t in items] == [i in free for i in range(48)]

    pareto = service.get(f"/searches/{job_id}/pareto").json()
    assert pareto["budget_ms"] == BUDGET_MS and pareto["evaluations"] == 48
    expected = [items[i]["index"] for i in pareto_front(points, budget=BUDGET_MS)]
    assert [p["index"] for p in pareto["front"]] == expected
    assert [p["short"] for p in pareto["front"]] == [p["short"] for p in report["pareto_front"]]
    assert pareto["hypervolume"] == pytest.approx(report["hypervolume"])
    curve = pareto["hypervolume_curve"]
    assert [step["evaluations"] for step in curve] == list(range(1, 49))
    volumes = [step["hypervolume"] for step in curve]
    assert volumes == sorted(volumes) and volumes[-1] == pytest.approx(pareto["hypervolume"])
    best = resumed_job["finished"]["best"]
    measured = {p["short"]: p["measured_ms"] for p in pareto["front"]}
    assert measured[best["short"]] == pytest.approx(best["measured_ms"])

    page = service.get(f"/searches/{job_id}/trials", params={"offset": 40, "limit": 5}).json()
    assert [t["index"] for t in page["items"]] == [40, 41, 42, 43, 44] and page["total"] == 48

    download = service.get(f"/searches/{job_id}/artifacts/best.onnx")
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/octet-stream"
    assert f'filename="{job_id}-best.onnx"' in download.headers["content-disposition"]
    model = tmp_path / "best.onnx"
    model.write_bytes(download.content)
    output = run_onnx(model, np.random.rand(1, 1, 32, 32).astype(np.float32))
    assert output.shape == (1, 10)
    missing = service.get(f"/searches/{job_id}/artifacts/secrets.txt")
    assert missing.status_code == 404 and "no artifact 'secrets.txt'" in missing.json()["detail"]

    listed = service.get("/searches", params={"status": "succeeded"}).json()
    assert job_id in [j["id"] for j in listed["items"]]
    queued = service.get("/searches", params={"status": "queued"}).json()
    assert job_id not in [j["id"] for j in queued["items"]]


def test_both_schemas_share_the_database_with_their_own_version_tables(
    sqlite_service: Deployment,
) -> None:
    with sqlite3.connect(sqlite_service.home / "nasvit.db") as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert {"jobs", "api_tokens", "nasvit_server_alembic_version"} <= tables
    assert {"latency_devices", "latency_entries", "alembic_version_latency_db"} <= tables


# ---------------------------------------------------------------------- cancellation
def test_a_running_search_is_cancelled_within_seconds(sqlite_service: Deployment) -> None:
    service = sqlite_service
    job = service.submit(budget=BUDGET, evaluations=5000)
    worker = service.start_worker(name="canceller")
    service.wait_for(job["id"], evaluated(16))
    response = service.post(f"/searches/{job['id']}/cancel")
    assert response.status_code == 202
    assert response.json()["cancel_requested"] is True
    cancelled = service.wait_for(job["id"], lambda j: j["status"] != "running", timeout=120)
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
    assert cancelled["progress"]["done"] < 5000
    assert worker.poll() is None  # the worker carries on, ready for the next job
    again = service.post(f"/searches/{job['id']}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    assert f"job {job['id']} cancelled" in service.worker_log("canceller")


# ---------------------------------------------------------------------- bad input
NO_TOKEN: dict[str, str] = {}
WRONG_TOKEN = {"Authorization": "Bearer nsv_not-a-real-token"}
GOOD = {"space": "efficientformer", "budget": "2ms"}
BAD_INPUT = [
    ("post", "/searches", {"json": {**GOOD, "space": "nope"}}, 422, "unknown search space 'nope'"),
    ("post", "/searches", {"json": {**GOOD, "device": "phone"}}, 422, "unknown device 'phone'"),
    ("post", "/searches", {"json": {**GOOD, "budget": "2"}}, 422, "cannot read latency budget"),
    ("post", "/searches", {"json": {**GOOD, "budget": "-2ms"}}, 422, "cannot read latency"),
    ("post", "/searches", {"json": {**GOOD, "budget": "0ms"}}, 422, "must be positive"),
    ("post", "/searches", {"json": {**GOOD, "budget": 2}}, 422, "budget: Input should be"),
    ("post", "/searches", {"json": {**GOOD, "evaluations": -5}}, 422, "evaluations: Input"),
    ("post", "/searches", {"json": {**GOOD, "evaluations": 0}}, 422, "greater than or equal"),
    ("post", "/searches", {"json": {**GOOD, "evaluations": 10**12}}, 422, "at most 100000"),
    ("post", "/searches", {"json": {**GOOD, "evaluations": "x"}}, 422, "valid integer"),
    ("post", "/searches", {"json": {**GOOD, "workers": 0}}, 422, "workers: Input"),
    ("post", "/searches", {"json": {**GOOD, "controller": "nsga3"}}, 422, "unknown controller"),
    ("post", "/searches", {"json": {**GOOD, "budgett": "2ms"}}, 422, "budgett: Extra inputs"),
    ("post", "/searches", {"json": {"space": "efficientformer"}}, 422, "budget: Field required"),
    ("post", "/searches", {"json": [GOOD]}, 422, "valid dictionary"),
    ("post", "/searches", {"content": b'{"space": "efficientformer",'}, 400, "malformed JSON"),
    ("post", "/searches", {"content": b"\xff\xfe"}, 400, "malformed JSON"),
    ("post", "/searches", {"json": GOOD, "headers": NO_TOKEN}, 401, "missing API token"),
    ("post", "/searches", {"json": GOOD, "headers": WRONG_TOKEN}, 401, "invalid or revoked"),
    ("post", "/searches/abc/cancel", {"headers": NO_TOKEN}, 401, "missing API token"),
    ("post", "/searches/abc/cancel", {}, 404, "no search with id 'abc'"),
    ("get", "/searches/abc", {}, 404, "no search with id 'abc'"),
    ("get", "/searches/abc/pareto", {}, 404, "no search with id 'abc'"),
    ("get", "/searches/abc/trials", {}, 404, "no search with id 'abc'"),
    ("get", "/searches/abc/artifacts/best.onnx", {}, 404, "no search with id 'abc'"),
    ("get", "/searches", {"params": {"status": "done"}}, 422, "status: Input should be"),
    ("get", "/searches", {"params": {"limit": 0}}, 422, "limit: Input should be greater"),
    ("get", "/searches", {"params": {"limit": 10**6}}, 422, "limit: Input should be less"),
    ("get", "/searches", {"params": {"offset": -1}}, 422, "offset: Input should be greater"),
    ("get", "/spaces/nope", {}, 404, "unknown search space 'nope'"),
    ("get", "/devices/nope/table", {}, 404, "unknown device 'nope'"),
    ("post", "/devices/nope/measurements", {"json": {"entries": []}}, 422, "entries"),
    ("post", "/devices/nope/measurements", {"json": {"entries": [{}]}}, 422, "Field required"),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "message"),
    BAD_INPUT,
    ids=[f"{i:02d}-{case[4][:30]}" for i, case in enumerate(BAD_INPUT)],
)
def test_bad_input_gets_a_4xx_with_a_reason(
    sqlite_service: Deployment,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    message: str,
) -> None:
    if "content" in kwargs:
        kwargs = {**kwargs, "headers": {**sqlite_service.auth, "content-type": "application/json"}}
    response = getattr(sqlite_service, method)(path, **kwargs)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and message in detail, detail
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"


def test_oversized_bodies_are_refused(sqlite_service: Deployment) -> None:
    limit = 4 * 1024 * 1024  # the default NASVIT_MAX_BODY_BYTES
    headers = {**sqlite_service.auth, "content-type": "application/json"}
    declared = sqlite_service.post("/searches", content=b" " * (limit + 1), headers=headers)
    assert declared.status_code == 413 and "over this server's limit" in declared.json()["detail"]

    def chunks() -> Any:  # no Content-Length: the limit is enforced while the body streams
        for _ in range(5):
            yield b" " * (1024 * 1024)

    streamed = sqlite_service.post("/searches", content=chunks(), headers=headers)
    assert streamed.status_code == 413 and "over this server's limit" in streamed.json()["detail"]


def test_measurements_upload_is_validated_before_anything_is_written(
    sqlite_service: Deployment,
) -> None:
    from nasvit.nn.blocks import BLOCK_KEY_SCHEMA

    service = sqlite_service
    [device] = service.get("/devices").json()
    table = service.get(f"/devices/{device['id']}/table", params={"limit": 3}).json()
    assert table["total"] == device["entries"] > 3 and len(table["items"]) == 3
    path = f"/devices/{device['name']}/measurements"
    good = {"key": f"{BLOCK_KEY_SCHEMA}|conv|upload-test", "median_ms": 0.5, "iqr_ms": 0.01, "n": 9}
    bad = {**good, "key": f"{BLOCK_KEY_SCHEMA}|conv|upload-test-2", "median_ms": -1.0}
    refused = service.post(path, json={"entries": [good, bad]})
    # The schema states the bound, so the refusal names the field and the bound.
    assert refused.status_code == 422
    assert "entries.1.median_ms" in refused.json()["detail"]
    assert "greater than 0" in refused.json()["detail"]
    foreign = service.post(path, json={"entries": [{**good, "key": "v0|conv|x"}]})
    assert foreign.status_code == 422 and "key schema 'v0'" in foreign.json()["detail"]
    not_a_number = service.post(
        path,
        content=json.dumps({"entries": [{**good, "median_ms": float("nan")}]}).encode(),
        headers={**service.auth, "content-type": "application/json"},
    )
    assert not_a_number.status_code == 422, not_a_number.text
    assert service.get("/devices").json()[0]["entries"] == device["entries"]  # nothing written

    assert service.post(path, json={"entries": [good]}, headers=NO_TOKEN).status_code == 401
    accepted = service.post(path, json={"entries": [good]})
    assert accepted.status_code == 200, accepted.text
    assert accepted.json() == {"device": device["name"], "inserted": 1, "skipped": 0}
    repeated = service.post(path, json={"entries": [good]}).json()
    assert repeated["inserted"] == 0 and repeated["skipped"] == 1
    assert service.get("/devices").json()[0]["entries"] == device["entries"] + 1


# ---------------------------------------------------------------------- tokens, access, CORS
def test_tokens_are_stored_hashed_and_can_be_revoked(sqlite_service: Deployment) -> None:
    import hashlib

    service = sqlite_service
    created = service.cli("token", "create", "temporary")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    with sqlite3.connect(service.home / "nasvit.db") as connection:
        rows = connection.execute("SELECT name, sha256 FROM api_tokens").fetchall()
    assert ("temporary", hashlib.sha256(token.encode()).hexdigest()) in rows
    assert all(token not in value for row in rows for value in row)

    auth = {"Authorization": f"Bearer {token}"}
    assert service.post("/searches/abc/cancel", headers=auth).status_code == 404  # accepted
    duplicate = service.cli("token", "create", "temporary")
    assert duplicate.returncode == 2 and "exists" in duplicate.stderr
    assert "Traceback" not in duplicate.stderr
    assert service.cli("token", "revoke", "temporary").returncode == 0
    revoked = service.post("/searches/abc/cancel", headers=auth)
    assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"]
    listing = service.cli("token", "list")
    assert listing.returncode == 0 and "temporary" in listing.stdout


def test_cors_is_closed_by_default(sqlite_service: Deployment) -> None:
    preflight = httpx.options(
        sqlite_service.api("/searches"),
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers
    assert preflight.status_code in (400, 405)


def test_bad_settings_are_a_one_line_error(sqlite_service: Deployment) -> None:
    env = {**sqlite_service.env, "NASVIT_READ_ACCESS": "sometimes"}
    result = subprocess.run(
        [NASVIT, "serve", "--port", "1"], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 2 and "NASVIT_READ_ACCESS" in result.stderr
    assert "Traceback" not in result.stderr


def test_reads_can_require_a_token_and_cors_can_name_origins(postgres_service: Deployment) -> None:
    service = postgres_service
    refused = service.get("/searches", headers={})
    assert refused.status_code == 401 and "missing API token" in refused.json()["detail"]
    assert service.get("/searches").status_code == 200
    health = service.get("/health", headers={}).json()
    assert health["status"] == "ok" and health["database"] == "ok"
    allowed = httpx.options(
        service.api("/searches"),
        headers={"Origin": "http://dashboard.example", "Access-Control-Request-Method": "POST"},
    )
    assert allowed.headers["access-control-allow-origin"] == "http://dashboard.example"
    other = httpx.options(
        service.api("/searches"),
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in other.headers


# ---------------------------------------------------------------------- several workers
def test_two_workers_share_a_postgres_queue_without_running_a_job_twice(
    postgres_service: Deployment,
) -> None:
    service = postgres_service
    jobs = [service.submit(budget=BUDGET, evaluations=4, seed=seed)["id"] for seed in range(3)]
    workers = [service.start_worker(name=f"pg-{i}") for i in range(2)]
    finished = [service.wait_finished(job_id) for job_id in jobs]
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    assert [worker.wait(timeout=60) for worker in workers] == [0, 0]
    assert [job["status"] for job in finished] == ["succeeded"] * 3, finished
    assert all(job["attempt"] == 1 for job in finished)
    logs = [service.worker_log(f"pg-{i}") for i in range(2)]
    for job_id in jobs:
        assert sum(log.count(f"running job {job_id}") for log in logs) == 1
        lines = (service.home / "jobs" / job_id / "trials.jsonl").read_text().splitlines()
        assert [json.loads(line)["index"] for line in lines] == [0, 1, 2, 3]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    return fresh_postgres_db(request.getfixturevalue("postgres_url"))


def test_claims_are_exclusive_under_concurrency(database_url: str) -> None:
    from nasvit.server.db import Database
    from nasvit.server.jobs import JobStore

    setup = Database.open(database_url)
    store = JobStore(setup)
    request = {"space": "efficientformer", "budget_ms": 2.0, "evaluations": 1}
    ids = [store.create(request).id for _ in range(40)]
    store.cancel(ids.pop())  # a cancelled job is never handed out
    claimed: dict[str, list[str]] = {}
    start = threading.Barrier(6)

    def claim_all(name: str) -> None:
        database = Database(database_url)  # each worker has its own connections
        mine = claimed.setdefault(name, [])
        start.wait()
        while (claim := JobStore(database).claim(name, lease_seconds=60)) is not None:
            mine.append(claim.job.id)
        database.close()

    threads = [threading.Thread(target=claim_all, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [job_id for mine in claimed.values() for job_id in mine]
    assert sorted(everything) == sorted(ids)  # each job exactly once
    assert store.counts()["running"] == len(ids)
    setup.close()


def test_an_expired_lease_moves_the_job_and_fences_the_old_worker(database_url: str) -> None:
    from nasvit.server.db import Database
    from nasvit.server.jobs import JobStore

    database = Database.open(database_url)
    store = JobStore(database)
    job = store.create({"space": "efficientformer", "budget_ms": 2.0, "evaluations": 1})
    first = store.claim("first", lease_seconds=0.2)
    assert first is not None and store.claim("second", lease_seconds=60) is None  # leased
    time.sleep(0.3)
    second = store.claim("second", lease_seconds=60)
    assert second is not None and second.job.id == job.id and second.attempt == 2
    assert store.heartbeat(first, 60) == (False, False)
    assert not store.set_progress(first, "evaluating candidates", 1, 1)
    assert not store.finish(first, "failed", error="stale")  # cannot clobber the new owner
    assert store.finish(second, "succeeded")
    assert store.get(job.id).status == "succeeded" and store.get(job.id).error is None
    database.close()


# ---------------------------------------------------------------------- result helpers
def test_front_helpers_agree_with_the_pipelines_pareto_functions() -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(1, 60))
        scores = np.round(rng.random(n), 1)  # coarse values make ties, as digits' accuracy does
        latencies = np.round(rng.random(n) * 0.5, 1)
        points = [(float(s), float(t)) for s, t in zip(scores, latencies, strict=True)]
        free = non_dominated_mask(points)
        # The reference: a point is on the front when no other point dominates it.
        pairwise = [not any(dominates(q, p) for q in points) for p in points]
        assert free == pairwise
        assert [i for i, f in enumerate(free) if f] == sorted(pareto_front(points))
        trials = [
            {"index": i, "short": f"a{i}", "arch": {}, "accuracy": s, "loss": 0.0, "score": s,
             "predicted_ms": t, "feasible": t <= 0.3}
            for i, (s, t) in enumerate(points)
        ]  # fmt: skip
        summary = pareto_summary(trials, None, 0.3)
        assert [p["index"] for p in summary["front"]] == pareto_front(points, budget=0.3)
        assert summary["hypervolume"] == pytest.approx(hypervolume(points, 0.3))
