"""Error-aware budgets in the job service: ``create_app`` over a fresh SQLite home, served by
uvicorn on 127.0.0.1 (in a thread; a worker runs in this process). The schema states the
constraints, bad values are refused with a reason and store nothing, a percentile in the
budget's text is stored parsed, points carry their intervals, and a search that finds no
subnet within its budget ends "failed" with the reason."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from nasvit.errors import NoSubnetFitsError
from nasvit.guarantees import BUDGET_PERCENTILES, DEFAULT_CONFIDENCE
from nasvit.searching.request import SearchResult, Trial
from nasvit.settings import Settings

from nasvit_testing.service import served_in_thread
from nasvit_testing.synthetic import synthetic_error_model

GOOD = {"space": "efficientformer", "budget": "2ms"}


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in list(os.environ):
        if key.startswith("NASVIT_"):
            monkeypatch.delenv(key)  # a local SQLite database, whatever the caller's setup
    return Settings(home=tmp_path, auto_workers=1)  # in-process, as the rest of the suite


@pytest.fixture
def client(settings: Settings) -> Iterator[httpx.Client]:
    """An HTTP client with a write token, on the app served by a real uvicorn."""

    from nasvit.server.app import create_app

    app = create_app(settings)
    token = app.state.services.tokens.create("budget-tests")
    headers = {"Authorization": f"Bearer {token}"}
    with served_in_thread(app) as url, httpx.Client(base_url=url, headers=headers) as http:
        yield http


def _job_count(client: httpx.Client) -> int:
    return client.get("/api/v1/searches").json()["total"]


def test_the_schema_states_the_confidence_and_percentile_constraints(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]["SearchCreate"]
    confidence = schema["properties"]["budget_confidence"]
    number = next(option for option in confidence["anyOf"] if option.get("type") == "number")
    assert number["exclusiveMinimum"] == 0 and number["exclusiveMaximum"] == 1
    assert "minimum" not in number and "maximum" not in number
    percentile = schema["properties"]["budget_percentile"]
    allowed = next(option for option in percentile["anyOf"] if option.get("type") == "integer")
    assert allowed["enum"] == list(BUDGET_PERCENTILES)
    assert "2ms@p90" in schema["properties"]["budget"]["description"]
    job = client.get("/openapi.json").json()["components"]["schemas"]["Job"]["properties"]
    assert {"budget_confidence", "budget_percentile"} <= set(job)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"budget_confidence": 0}, "budget_confidence: Input should be greater than 0"),
        ({"budget_confidence": 1}, "budget_confidence: Input should be less than 1"),
        ({"budget_confidence": 1.5}, "budget_confidence: Input should be less than 1"),
        ({"budget_confidence": -0.1}, "budget_confidence: Input should be greater than 0"),
        ({"budget_confidence": "abc"}, "budget_confidence: Input should be a valid number"),
        ({"budget_percentile": 42}, "budget_percentile: Input should be 50, 75, 90, 95 or 99"),
        ({"budget_percentile": "p90"}, "budget_percentile: Input should be"),
        ({"budget": "2ms@p42x"}, "unknown latency percentile 'p42x'"),
        ({"budget": "2ms@p42"}, "unknown latency percentile 42: use one of p50"),
        ({"budget": "2ms@p90", "budget_percentile": 99}, "is at p90 but budget_percentile is 99"),
        ({"budget": "2ms@p90", "budget_confidence": 0.9}, "not both"),
        ({"budget_percentile": 90, "budget_confidence": 0.9}, "not both"),
    ],
)
def test_a_bad_guarantee_is_refused_and_stores_no_job(
    client: httpx.Client, body: dict[str, Any], message: str
) -> None:
    before = _job_count(client)
    response = client.post("/api/v1/searches", json={**GOOD, **body})
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]
    assert _job_count(client) == before == 0


def test_a_guarantee_is_stored_and_shown_with_the_job(client: httpx.Client, settings: Settings):
    from nasvit.server.db import Database
    from nasvit.server.jobs import JobStore

    at_percentile = client.post("/api/v1/searches", json={**GOOD, "budget": "2 ms @ p95"})
    assert at_percentile.status_code == 202, at_percentile.text
    job = at_percentile.json()
    assert (job["budget_ms"], job["budget_percentile"], job["budget_confidence"]) == (2, 95, None)
    confident = client.post("/api/v1/searches", json={**GOOD, "budget_confidence": 0.8}).json()
    assert (confident["budget_percentile"], confident["budget_confidence"]) == (None, 0.8)
    plain = client.post("/api/v1/searches", json=GOOD).json()
    assert (plain["budget_percentile"], plain["budget_confidence"]) == (None, None)
    # What a worker reads back is the request it will run.
    from nasvit.server.worker import Worker

    database = Database.open(settings.resolved_database_url)
    stored = JobStore(database).get(job["id"]).request
    database.close()
    worker = Worker(settings)
    request = worker._search_request(stored, Path("unused"))
    worker.close()
    assert request.budget_ms == 2.0 and request.guarantee.percentile == 95


def _trial(index: int, score: float, latency: float, feasible: bool, **extra: Any) -> dict:
    return asdict(Trial(index, {}, f"a{index}", score, 1.0, score, latency, feasible, **extra))


def test_points_carry_their_interval_and_judged_latency(
    client: httpx.Client, settings: Settings
) -> None:
    job = client.post("/api/v1/searches", json={**GOOD, "budget_confidence": 0.9}).json()
    folder = settings.resolved_artifact_root / job["id"]
    folder.mkdir(parents=True)
    lines = [
        _trial(0, 0.6, 1.0, True, low_ms=0.9, high_ms=1.2, judged_ms=1.15),
        # Predicted within the budget, its upper bound is not: not feasible, not on the front.
        _trial(1, 0.7, 1.8, False, low_ms=1.6, high_ms=2.3, judged_ms=2.2),
        _trial(2, 0.5, 0.5, True),  # written before intervals existed
    ]
    (folder / "trials.jsonl").write_text("".join(json.dumps(t) + "\n" for t in lines))
    trials = client.get(f"/api/v1/searches/{job['id']}/trials").json()["items"]
    assert [(t["low_ms"], t["high_ms"], t["judged_ms"]) for t in trials] == [
        (0.9, 1.2, 1.15),
        (1.6, 2.3, 2.2),
        (None, None, None),
    ]
    assert [t["interval_confidence"] for t in trials] == [DEFAULT_CONFIDENCE] * 2 + [None]
    front = client.get(f"/api/v1/searches/{job['id']}/pareto").json()["front"]
    assert [p["index"] for p in front] == [2, 0]
    assert front[1]["low_ms"] == 0.9 and front[1]["judged_ms"] == 1.15


def test_a_search_with_no_subnet_within_its_budget_fails_with_the_reason(
    client: httpx.Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nasvit.searching.pipeline as pipeline
    from nasvit.server.worker import Worker

    reason = "none of the 20 candidates measured within 2 ms at p90; the closest took 2.15 ms"
    asked: list[Any] = []

    def no_fit(request: Any, *args: Any, **kwargs: Any) -> SearchResult:
        asked.append(request)
        raise NoSubnetFitsError(reason)

    monkeypatch.setattr(pipeline, "run_search", no_fit)
    job = client.post("/api/v1/searches", json={**GOOD, "budget": "2ms@p90"}).json()
    worker = Worker(settings, name="no-fit")
    try:
        assert worker.run(once=True) == 1
    finally:
        worker.close()
    finished = client.get(f"/api/v1/searches/{job['id']}").json()
    assert finished["status"] == "failed" and finished["error"] == reason
    assert finished["best"] is None
    assert asked[0].budget_percentile == 90


def test_devices_show_what_a_validation_says_about_predictions(
    client: httpx.Client, settings: Settings
) -> None:
    from nasvit.latency_db import LatencyStore
    from nasvit.latency_db.device import DeviceFingerprint
    from nasvit.latency_db.records import ErrorStats, ValidationRecord

    model = synthetic_error_model()
    ceiling = {"n": 20, "mape": 1.5, "within_5": 0.97, "within_10": 1.0, "spearman": None}
    store = LatencyStore.open(settings.resolved_database_url)
    validated, old = (
        store.ensure_device(DeviceFingerprint("cpu", 1, 1, "os", "ort", "1", "CPU", 1, s), name)
        for s, name in (("all", "a"), ("none", "b"))
    )
    raw = ErrorStats(40, 3.0, 0.8, 0.99, 0.98)
    store.add_validation(
        validated.id,
        ValidationRecord(
            "efficientformer",
            "v1",
            raw,
            details={"error_model": model.to_dict(), "noise_ceiling": ceiling},
        ),
    )
    store.add_validation(old.id, ValidationRecord("efficientformer", "v1", raw))  # before bands
    store.close()

    devices = {d["name"]: d["latest_validation"] for d in client.get("/api/v1/devices").json()}
    summary = devices["a"]
    assert "calibration_helps" not in summary and "calibrated_test" not in summary
    assert summary["validated"] is True and summary["raw"]["mape"] == 3.0
    assert summary["prediction_error"]["n"] == model.judged.n == 20
    assert summary["prediction_error"]["mape"] == pytest.approx(model.judged.mape)
    assert summary["noise_ceiling"] == ceiling
    assert [band["model"] for band in summary["bands"]] == [b.model for b in model.bands]
    assert [band["n_judged"] for band in summary["bands"]] == [b.n_judged for b in model.bands]
    assert summary["prediction_path"] == ", ".join(b.model for b in model.bands)
    before = devices["b"]
    assert before["validated"] is False and before["bands"] is None
    assert before["prediction_error"] == before["raw"] and before["noise_ceiling"] is None
