"""The dashboard in real headless Chromium (the ``browser`` fixture of nasvit_testing.chromium:
Debian's ``chromium`` driven by Playwright; no browser download) against
``create_app(settings)`` served by uvicorn on 127.0.0.1, with real searches run by a real
``nasvit worker`` process on the tiny supernet and measured latency table of conftest's
``search_assets``.

The server requires a token for reading, so the page is first seen refusing, then the token is
typed into the page's field. The page stays open while the worker runs the jobs: it must reach
the finished state by polling alone. Screenshots are saved under test-artifacts/dashboard/.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from nasvit_testing.service import served_in_thread

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "dashboard"
NASVIT = str(Path(sys.executable).parent / "nasvit")
GREY = "rgb(176, 176, 176)"  # DOMINATED_COLOR in server/static/app.js
BUDGET = "300us"
BUDGET_MS = 0.3
EVALUATIONS = 12
JOBS = [{"evaluations": EVALUATIONS}, {"evaluations": 6, "controller": "random", "seed": 1}]
JOB_TIMEOUT_S = 600

pytestmark = pytest.mark.slow


@dataclass
class Service:
    url: str
    env: dict[str, str]  # the NASVIT_* environment a worker needs to join this service
    token: str
    home: Path
    job_ids: list[str]  # in the order of JOBS

    def get(self, path: str) -> Any:
        response = httpx.get(
            f"{self.url}/api/v1{path}", headers={"Authorization": f"Bearer {self.token}"}
        )
        response.raise_for_status()
        return response.json()


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, search_assets: dict[str, Path]
) -> Iterator[Service]:
    """create_app on real uvicorn (loopback), reads need a token, two searches queued: the
    default controller and random sampling, to compare."""

    from nasvit.server.app import create_app
    from nasvit.settings import Settings

    home = tmp_path_factory.mktemp("dashboard-home")
    # The measured latency table comes with the database, so the worker profiles nothing.
    shutil.copy(search_assets["database"], home / "nasvit.db")
    checkpoint = search_assets["checkpoint"]
    worker_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NASVIT_") or k == "NASVIT_AUTO_WORKERS"
    }
    worker_env.update(
        NASVIT_HOME=str(home),
        NASVIT_CHECKPOINTS=json.dumps({"efficientformer": str(checkpoint)}),
        NASVIT_READ_ACCESS="token",
        OMP_NUM_THREADS="1",  # two shared cores: keep torch from oversubscribing them
    )
    settings = Settings(home=home, checkpoints={"efficientformer": checkpoint}, read_access="token")
    app = create_app(settings)
    with served_in_thread(app) as url:
        created = subprocess.run(
            [NASVIT, "token", "create", "dashboard-test"],
            capture_output=True,
            text=True,
            env=worker_env,
            timeout=120,
        )
        assert created.returncode == 0, created.stderr
        token = created.stdout.strip()
        job_ids = []
        for body in JOBS:
            submitted = httpx.post(
                f"{url}/api/v1/searches",
                json={"space": "efficientformer", "budget": BUDGET, **body},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert submitted.status_code == 202, submitted.text
            job_ids.append(submitted.json()["id"])
        yield Service(url=url, env=worker_env, token=token, home=home, job_ids=job_ids)


@pytest.fixture(scope="module")
def page(browser: Any, service: Service) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
    opened = context.new_page()
    errors: list[str] = []
    requests: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on("request", lambda request: requests.append(request.url))
    opened.errors = errors
    opened.requests = requests
    yield opened
    context.close()


def _trace_points(page: Any, plot: str) -> list[list[str]]:
    """Per plotly trace of ``plot``, the inline style of each drawn SVG marker."""
    return page.evaluate(
        """(plot) => [...document.querySelectorAll(`${plot} .scatterlayer .trace`)].map((trace) =>
            [...trace.querySelectorAll("path.point")].map((p) => p.getAttribute("style")))""",
        plot,
    )


def test_page_and_assets_are_served_locally(service: Service) -> None:
    page = httpx.get(f"{service.url}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'src="/static/plotly.min.js"' in page.text and "https://" not in page.text
    plotly_js = httpx.get(f"{service.url}/static/plotly.min.js")
    assert plotly_js.status_code == 200 and b"plotly.js" in plotly_js.content[:200]
    for asset in ("app.js", "style.css"):
        served = httpx.get(f"{service.url}/static/{asset}")
        assert served.status_code == 200 and "://" not in served.text  # nothing fetched elsewhere
    assert httpx.get(f"{service.url}/static/missing.js").status_code == 404


def test_page_asks_for_the_token_then_lists_the_queued_jobs(page: Any, service: Service) -> None:
    page.goto(service.url + "/")
    message = page.locator("#message.error")
    message.wait_for(timeout=30_000)
    assert "401" in message.inner_text() and "token" in message.inner_text()
    assert page.locator("#jobs-table tbody tr").count() == 0

    page.fill("#token-input", service.token)
    page.click("#token-form button[type=submit]")
    rows = page.locator("#jobs-table tbody tr")
    rows.first.wait_for(timeout=30_000)
    assert sorted(r.get_attribute("data-job-id") for r in rows.all()) == sorted(service.job_ids)
    assert [r.locator(".status").inner_text() for r in rows.all()] == ["queued", "queued"]
    assert page.evaluate("localStorage.getItem('nasvit.token')") == service.token


def _wait_until_finished(service: Service, worker: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        jobs = [service.get(f"/searches/{job_id}") for job_id in service.job_ids]
        if all(job["status"] in ("succeeded", "failed", "cancelled") for job in jobs):
            break
        assert worker.poll() is None, f"worker exited: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"jobs unfinished: {jobs}\n{log.read_text()[-3000:]}"
        time.sleep(0.5)
    assert [job["status"] for job in jobs] == ["succeeded", "succeeded"], log.read_text()[-3000:]


def test_live_page_follows_the_job_to_its_pareto_front(page: Any, service: Service) -> None:
    job_id = service.job_ids[0]
    page.locator(f"#jobs-table tr[data-job-id='{job_id}']").click()
    page.locator("#job-status.status-queued").wait_for(timeout=30_000)
    # Every status the page shows for the job, as it shows it.
    page.evaluate(
        """() => {
            window.seenStatuses = [];
            const status = document.querySelector("#job-status");
            new MutationObserver(() => window.seenStatuses.push(status.textContent))
                .observe(status, { childList: true, characterData: true, subtree: true });
        }"""
    )

    # The page is left alone (no reload) while a real worker process runs both jobs.
    log = service.home / "worker.log"
    with log.open("w") as sink:
        worker = subprocess.Popen(
            [NASVIT, "worker", "--poll", "0.2", "--name", "dashboard-worker"],
            env=service.env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_finished(service, worker, log)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)

    page.locator("#job-status.status-succeeded").wait_for(timeout=30_000)
    seen = page.evaluate("window.seenStatuses")
    assert "running" in seen and seen[-1] == "succeeded", seen
    job = service.get(f"/searches/{job_id}")
    trials = service.get(f"/searches/{job_id}/trials?limit=500")
    pareto = service.get(f"/searches/{job_id}/pareto")
    assert trials["total"] == EVALUATIONS
    page.wait_for_function(
        "(n) => document.querySelector('#pareto-plot').dataset.trials === String(n)",
        arg=trials["total"],
        timeout=30_000,
    )

    # Every trial is one SVG marker: the front in colour, the dominated ones grey.
    front, dominated, measured, best, front_line = _trace_points(page, "#pareto-plot")
    assert len(front) + len(dominated) == trials["total"]
    assert len(dominated) == sum(p["dominated"] for p in trials["items"]) > 0
    assert all(f"fill: {GREY}" in style for style in dominated)
    assert not any(f"fill: {GREY}" in style for style in front)
    assert len(measured) == sum(p["measured_ms"] is not None for p in trials["items"]) > 0
    assert len(best) == 1 and front_line == []

    # The budget is a vertical line at the job's budget.
    shapes = page.evaluate("document.querySelector('#pareto-plot').layout.shapes")
    assert [(s["x0"], s["x1"], s["yref"]) for s in shapes] == [(BUDGET_MS, BUDGET_MS, "paper")]
    assert page.locator("#pareto-plot .shapelayer path").count() == 1

    # The hypervolume curve has one marker per sampled step.
    (curve,) = _trace_points(page, "#hypervolume-plot")
    assert len(curve) == len(pareto["hypervolume_curve"]) > 0

    # Hovering a point names the architecture with its predicted and measured latency.
    best_point = page.locator("#pareto-plot .scatterlayer .trace").nth(3).locator("path.point")
    box = best_point.bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    hover = page.locator("#pareto-plot .hoverlayer .hovertext").first
    hover.wait_for(timeout=10_000)
    label = hover.text_content() or ""  # an SVG node: text_content, not inner_text
    assert job["best"]["short"] in label and "predicted" in label and "measured" in label
    # ... and the prediction's interval, when the table has an error model.
    [best_trial] = [t for t in trials["items"] if t["short"] == job["best"]["short"]][:1]
    if best_trial["low_ms"] is None:
        assert "(no interval)" in label
    else:
        assert f"at {100 * best_trial['interval_confidence']:g}%" in label and "[" in label

    # Clicking it downloads the job's best.onnx (fetched with the token).
    with page.expect_download(timeout=30_000) as download_info:
        page.mouse.click(x, y)
    download = download_info.value
    assert download.suggested_filename == f"{job_id}-best.onnx"
    served = httpx.get(
        f"{service.url}/api/v1/searches/{job_id}/artifacts/best.onnx",
        headers={"Authorization": f"Bearer {service.token}"},
    )
    assert Path(download.path()).read_bytes() == served.content and len(served.content) > 1000

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.mouse.move(5, 5)  # no hover label in the screenshot
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert page.errors == []


def test_jobs_compare_on_one_plot(page: Any, service: Service) -> None:
    fronts = [service.get(f"/searches/{job_id}/pareto")["front"] for job_id in service.job_ids]
    assert page.locator("#compare-section").is_hidden()
    for job_id in service.job_ids:
        page.locator(f"#jobs-table tr[data-job-id='{job_id}'] input.compare").check()
    page.locator("#compare-section").wait_for(state="visible", timeout=30_000)
    page.wait_for_function(
        "() => document.querySelector('#compare-plot').data?.length === 2", timeout=30_000
    )
    drawn = _trace_points(page, "#compare-plot")
    assert [len(points) for points in drawn] == [len(front) for front in fronts]
    assert all(len(front) > 0 for front in fronts)
    names = page.evaluate("document.querySelector('#compare-plot').data.map((t) => t.name)")
    assert names == [
        f"efficientformer · this CPU · 0.3 ms ({job_id[:8]})" for job_id in service.job_ids
    ]
    # One budget line per job, and the hypervolume plot shows both curves.
    assert page.locator("#compare-plot .shapelayer path").count() == 2
    page.wait_for_function(
        "() => document.querySelector('#hypervolume-plot').data.length === 2", timeout=30_000
    )
    page.mouse.move(5, 5)
    page.screenshot(path=str(ARTIFACTS / "dashboard-compare.png"), full_page=True)
    assert page.errors == []
    # Everything the page loaded came from this server (no CDN), or from the page itself.
    foreign = [u for u in page.requests if not u.startswith((service.url + "/", "blob:", "data:"))]
    assert page.requests and foreign == []
