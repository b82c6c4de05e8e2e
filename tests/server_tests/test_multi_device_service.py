"""A search of several devices on the job service: `nasvit serve` (real uvicorn on 127.0.0.1) and
a real `nasvit worker` over SQLite, two local devices (conftest's measured table for one
thread, and a second device with two threads measured here), driven over HTTP; then the
dashboard in real headless Chromium draws one front per device on one chart.

Covers: the job stores and shows the devices and each one's best (measured end to end there);
``?device=NAME`` on the front, trials and artifacts (422 naming the devices when missing or
unknown); ``devices.json``; bad ``devices`` bodies answered 422 with nothing stored.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from nasvit_testing.service import Deployment, environment, start_deployment
from nasvit_testing.toy_spaces import small_efficientformer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "dashboard"
SHAPE: dict[str, Any] = {"num_classes": 10, "in_channels": 1}
SECOND = "two-threads"
BUDGETS = {"first": 50.0, SECOND: 40.0}


@dataclass
class Finished:
    service: Deployment
    job: dict[str, Any]
    names: list[str]  # the devices, in the job's order


@pytest.fixture(scope="module")
def finished(
    tmp_path_factory: pytest.TempPathFactory, search_assets: dict[str, Any]
) -> Iterator[Finished]:
    from nasvit.evaluation.latency import resolve_device, validate_table
    from nasvit.latency_db import LatencyStore, MeasurementProtocol, build_table
    from nasvit.settings import Settings

    home = tmp_path_factory.mktemp("multi-device-home")
    shutil.copy(search_assets["database"], home / "nasvit.db")
    store = LatencyStore.open(Settings(home=home).resolved_database_url)
    first = store.device(search_assets["device"]).name  # conftest's one-thread device
    quick = MeasurementProtocol.quick()
    device, profiler = resolve_device(store, SECOND, threads=2, protocol=quick)
    space = small_efficientformer()
    build_table(store, profiler, device, space.enumerate_blocks(**SHAPE))
    validate_table(space, store, profiler, device, 4, network_protocol=quick, **SHAPE)
    store.close()
    service = Deployment(env=environment(home, search_assets), home=home)
    try:
        start_deployment(service)
        job = service.submit(
            budget="50ms",
            devices=[{"name": first}, {"name": SECOND, "budget": "40ms"}],
            evaluations=6,
        )
        service.start_worker(name="multi")
        done = service.wait_finished(job["id"], timeout=600)
        yield Finished(service, done, [first, SECOND])
    finally:
        service.stop()


def test_the_job_shows_each_devices_budget_and_best(finished: Finished) -> None:
    job, (first, second) = finished.job, finished.names
    assert job["status"] == "succeeded", job["error"]
    assert job["device"] is None
    devices = job["devices"]
    assert [(d["name"], d["budget_ms"]) for d in devices] == [(first, 50.0), (second, 40.0)]
    for device in devices:
        best = device["best"]
        assert best is not None and 0 < best["measured_ms"] <= device["budget_ms"]
        assert best["predicted_ms"] <= device["budget_ms"]
    assert job["best"]["short"] == devices[0]["best"]["short"]  # the first device's
    # The job's progress named the devices' stages while it ran; it ends on the last device.
    assert job["progress"]["stage"].startswith(f"[{second}] ")


def test_each_devices_front_trials_and_artifacts_are_served(finished: Finished) -> None:
    service, job_id = finished.service, finished.job["id"]
    summary = service.get(f"/searches/{job_id}/artifacts/devices.json")
    assert summary.status_code == 200, summary.text
    by_name = {d["name"]: d for d in summary.json()["devices"]}
    assert list(by_name) == finished.names
    for device in finished.job["devices"]:
        name = device["name"]
        pareto = service.get(f"/searches/{job_id}/pareto", params={"device": name})
        assert pareto.status_code == 200, pareto.text
        front = pareto.json()
        assert front["budget_ms"] == device["budget_ms"] and front["evaluations"] == 6
        assert front["front"] and all(
            p["predicted_ms"] <= device["budget_ms"] for p in front["front"]
        )
        assert [p["short"] for p in front["front"]] == [p["short"] for p in by_name[name]["front"]]
        assert by_name[name]["best"]["short"] == device["best"]["short"]
        trials = service.get(f"/searches/{job_id}/trials", params={"device": name}).json()
        assert trials["total"] == 6
        measured = [t for t in trials["items"] if t["short"] == device["best"]["short"]]
        assert measured and measured[0]["measured_ms"] == device["best"]["measured_ms"]
        onnx = service.get(f"/searches/{job_id}/artifacts/best.onnx", params={"device": name})
        assert onnx.status_code == 200 and len(onnx.content) > 1000
        assert f"{name}-best.onnx" in onnx.headers["content-disposition"]
        report = service.get(f"/searches/{job_id}/artifacts/report.json", params={"device": name})
        assert report.json()["device"] == name
    # The devices' folders hold what the pipeline wrote for each.
    folder = finished.service.home / "jobs" / job_id
    assert {p.name for p in folder.iterdir() if p.is_dir()} == set(finished.names)


def test_a_device_nothing_fits_fails_the_job_and_the_others_results_stay(
    finished: Finished,
) -> None:
    service, (first, second) = finished.service, finished.names
    job = service.submit(
        budget="50ms", devices=[{"name": first}, {"name": second, "budget": "1us"}], evaluations=4
    )
    done = service.wait_finished(job["id"], timeout=600)
    assert done["status"] == "failed"
    assert f"on {second}: no architecture found meets 1 us" in done["error"]
    summary = service.get(f"/searches/{job['id']}/artifacts/devices.json")
    assert summary.status_code == 200, summary.text
    by_name = {d["name"]: d for d in summary.json()["devices"]}
    assert by_name[second]["best"] is None and "meets 1 us" in by_name[second]["error"]
    assert by_name[first]["best"]["measured_ms"] > 0
    onnx = service.get(f"/searches/{job['id']}/artifacts/best.onnx", params={"device": first})
    assert onnx.status_code == 200
    missing = service.get(f"/searches/{job['id']}/artifacts/best.onnx", params={"device": second})
    assert missing.status_code == 404


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("pareto", {}, "targets several devices"),
        ("pareto", {"device": "nope"}, "'nope' is not one of them"),
        ("trials", {}, "targets several devices"),
        ("artifacts/best.onnx", {}, "targets several devices"),
    ],
)
def test_a_device_must_be_named_for_a_search_of_several(
    finished: Finished, path: str, params: dict[str, str], message: str
) -> None:
    response = finished.service.get(f"/searches/{finished.job['id']}/{path}", params=params)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert message in detail and all(name in detail for name in finished.names)


@pytest.mark.parametrize(
    ("devices", "extra", "message"),
    [
        ([{"name": "a"}], {"device": "a"}, "not both"),
        ([{"name": "a"}, {"name": "A"}], {}, "named twice"),
        ([{"name": "../x"}], {}, "name"),
        ([{"name": "a", "budget": "0ms"}], {}, "budget"),
        ([{"name": "a", "budget": "1ms@p33"}], {}, "budget"),
        ([{"name": f"d{i}"} for i in range(9)], {}, "devices"),
        ([], {}, "devices"),
        ([{"name": "a", "bugdet": "1ms"}], {}, "bugdet"),
        ([{"name": "no-such-device"}], {}, "no-such-device"),
    ],
)
def test_bad_devices_are_refused_and_nothing_is_stored(
    finished: Finished, devices: list[dict[str, Any]], extra: dict[str, Any], message: str
) -> None:
    service = finished.service
    before = service.get("/searches").json()["total"]
    body = {"space": "efficientformer", "budget": "2ms", "devices": devices, **extra}
    response = service.post("/searches", json=body)
    assert response.status_code == 422, response.text
    assert message in response.text
    assert service.get("/searches").json()["total"] == before


def test_the_schema_states_the_devices_bounds(finished: Finished) -> None:
    document = httpx.get(f"{finished.service.url}/openapi.json", timeout=30).json()
    schema = document["components"]["schemas"]
    devices = schema["SearchCreate"]["properties"]["devices"]["anyOf"][0]
    assert (devices["minItems"], devices["maxItems"]) == (1, 8)
    target = schema["DeviceBudget"]
    assert target["additionalProperties"] is False
    assert target["properties"]["name"]["pattern"].startswith("^[A-Za-z0-9]")
    budget = target["properties"]["budget"]["anyOf"][0]
    assert budget["pattern"] == schema["SearchCreate"]["properties"]["budget"]["pattern"]


def test_the_dashboard_draws_one_front_per_device(browser: Any, finished: Finished) -> None:
    job_id, names = finished.job["id"], finished.names
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(f"{finished.service.url}/#job={job_id}")
        page.wait_for_function(
            "() => document.getElementById('pareto-plot').dataset.devices", timeout=60_000
        )
        plot = page.evaluate(
            """() => {
                const plot = document.getElementById('pareto-plot');
                return {
                    devices: plot.dataset.devices,
                    traces: plot.data.map((t) => ({name: t.name, color: t.marker.color,
                        points: t.x.length})),
                    budgets: plot.layout.shapes.map((s) => [s.x0, s.line.color]),
                    legend: [...plot.querySelectorAll('.legend .traces .legendtext')]
                        .map((n) => n.textContent),
                };
            }"""
        )
        assert plot["devices"] == ",".join(names)
        fronts = {t["name"]: t for t in plot["traces"] if t["name"].endswith(": Pareto front")}
        assert list(fronts) == [f"{name}: Pareto front" for name in names]
        assert all(trace["points"] > 0 for trace in fronts.values())
        colors = [trace["color"] for trace in fronts.values()]
        assert len(set(colors)) == len(names)  # one colour per device
        bests = {t["name"]: t for t in plot["traces"] if t["name"].endswith(": best")}
        assert [t["points"] for t in bests.values()] == [1, 1]
        # Each device's budget line in its colour.
        assert plot["budgets"] == [[BUDGETS["first"], colors[0]], [BUDGETS[SECOND], colors[1]]]
        assert {f"{name}: Pareto front" for name in names} <= set(plot["legend"])
        curves = page.evaluate(
            "() => document.getElementById('hypervolume-plot').data.map((t) => t.name)"
        )
        assert curves == [f"{name} ({job_id[:8]})" for name in names]  # one per device
        summary = page.locator("#job-summary").inner_text()
        for device in finished.job["devices"]:
            assert f"best on {device['name']} {device['best']['short']}" in summary
        row = page.locator(f"#jobs-table tbody tr[data-job-id='{job_id}']").inner_text()
        assert all(name in row for name in names)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "multi-device.png"), full_page=True)
        assert errors == []
    finally:
        context.close()
